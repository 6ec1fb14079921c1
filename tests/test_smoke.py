from conftest import login, seen_headers


async def test_login_and_proxy(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    await login(client)
    resp = await client.get("/hello?x=1")
    assert resp.status == 200
    body = await resp.json()
    assert body["path"] == "/hello?x=1"
    assert seen_headers(body)["x-auth-user"] == ["alice"]


async def test_redis_store(redis_server, upstream, make_config, gateway):
    config = make_config(str(upstream.make_url("/")),
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    client = await gateway(config)
    await login(client)
    resp = await client.get("/hello")
    assert resp.status == 200
