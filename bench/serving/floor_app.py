"""The floor: a hello-world ASGI app on the same HTTP stack (uvicorn, httptools, uvloop) that
reads the body and answers a fixed small JSON, so the table shows what the stack itself costs."""

BODY = b'{"model_name":"floor","outputs":[]}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
