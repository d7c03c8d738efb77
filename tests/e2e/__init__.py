"""End-to-end tests: real service processes started the way a user starts them."""
