"""The shared service kit: what every Keel service needs exactly once."""
