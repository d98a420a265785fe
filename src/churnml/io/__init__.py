"""The data contract, loading and validation, the named data sets, and files churnml writes."""
