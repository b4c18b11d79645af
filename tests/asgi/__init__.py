"""``asyncwsgi.to_asgi`` under real ASGI servers (uvicorn, hypercorn on asyncio and on trio)."""
