"""mlscale.features."""
