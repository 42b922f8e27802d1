//! Tables on stdout: a header row and one row per item, each column padded to its widest cell
//! (two spaces apart; the last column unpadded), as `docker ps` and `kubectl get` print them.

/// Prints `header` and `rows` aligned.
pub fn print<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) {
    let mut all = vec![header.map(str::to_owned)];
    all.extend(rows);
    for line in render(&all) {
        println!("{line}");
    }
}

fn render<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == N {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let rows = [
            ["ID".to_owned(), "STATUS".to_owned(), "NOTE".to_owned()],
            ["a-long-id".to_owned(), "Ok".to_owned(), "x".to_owned()],
            ["b".to_owned(), "".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            super::render(&rows),
            ["ID         STATUS  NOTE", "a-long-id  Ok      x", "b"]
        );
    }
}
