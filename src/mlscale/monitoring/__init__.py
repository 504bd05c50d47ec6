"""mlscale.monitoring."""
