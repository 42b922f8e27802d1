//! Local KMS stand-in — being written.
