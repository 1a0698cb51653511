"""Bundled human reference data for ``cram fit-gamma --human`` (CSV files + ``human.json``)."""
