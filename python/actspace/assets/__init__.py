"""Assets shipped inside the package."""
