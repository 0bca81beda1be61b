"""Use cases of the API: routes stay thin and call these."""
