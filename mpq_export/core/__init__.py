"""The types every layer of the package shares (the bottom of the import order, above util/)."""
