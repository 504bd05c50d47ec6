"""mlscale.streams."""
