"""mlscale.vision."""
