"""mlscale.gateway."""
