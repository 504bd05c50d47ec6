"""mlscale.serving."""
