"""specd.client: the Python client SDK of a specd router (blocking and asyncio).

    from specd.client import Client, AsyncClient
    with Client("127.0.0.1:50051") as client:
        print(client.generate("def fib(n):", max_new_tokens=32).text)
        for chunk in client.stream("import os", max_new_tokens=32):
            print(chunk.text, end="")
"""

from specd.client.aio import AsyncClient
from specd.client.errors import Cancelled, DeadlineExceeded, InvalidRequest, Overloaded, SpecdClientError, Unavailable
from specd.client.sync import Client, Stream
from specd.client.types import Chunk, Result, RouterStats, Timing, Usage

__all__ = ["Client", "AsyncClient", "Stream", "Chunk", "Result", "Usage", "Timing", "RouterStats", "SpecdClientError",
           "InvalidRequest", "Overloaded", "Unavailable", "DeadlineExceeded", "Cancelled"]
