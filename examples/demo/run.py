"""Placeholder for the demo: replaced as the parts land."""

print("mlscale demo: nothing to run yet")
