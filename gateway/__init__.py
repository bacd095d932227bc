"""S3 API gateway (aiohttp) over the node core: the S3-gateway issue builds it here."""
