"""specd.client: the Python client SDK."""
