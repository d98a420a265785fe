"""The Hydra configs that ship with churnml (a package so that Hydra finds them in an installed wheel)."""
