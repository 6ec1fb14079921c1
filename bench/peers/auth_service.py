"""Forward-auth service for the nginx auth_request peer, written the way a user would.

One uvloop process per core sharing the port via SO_REUSEPORT. Each request:
verify the HS256 JWT in the ``session`` cookie, then ONE Redis GET to see that
the session is still alive. Usage: auth_service.py PORT REDIS_URL [WORKERS]
with the JWT secret in $AUTH_SECRET.
"""

import os
import socket
import sys

import jwt
import redis.asyncio as redis
import uvloop
from aiohttp import web

SECRET = os.environ["AUTH_SECRET"]


async def auth(request: web.Request) -> web.Response:
    token = request.cookies.get("session")
    if not token:
        return web.Response(status=401)
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return web.Response(status=401)
    user = await request.app["redis"].get(f"auth:sess:{claims['sid']}")
    if user is None:
        return web.Response(status=401)
    return web.Response(status=200, headers={"X-Auth-User": user})


async def redis_client(app: web.Application):
    app["redis"] = redis.from_url(app["redis_url"], decode_responses=True)
    yield
    await app["redis"].aclose()


def serve(port: int, redis_url: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    app = web.Application()
    app["redis_url"] = redis_url
    app.cleanup_ctx.append(redis_client)
    app.router.add_get("/auth", auth)
    web.run_app(app, sock=sock, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    port, url = int(sys.argv[1]), sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else os.cpu_count() or 1
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    serve(port, url)
