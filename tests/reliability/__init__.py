"""Reliability and security tests: crashes, concurrency, bad input, auth, start-up."""
