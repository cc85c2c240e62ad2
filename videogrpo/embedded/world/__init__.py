"""The synthetic video world: a prompt grammar with a held-out split, and its renderer."""
