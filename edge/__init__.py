"""icu-edge daemon core."""
