"""mlscale.cache."""
