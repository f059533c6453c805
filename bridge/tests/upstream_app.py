"""A real FastAPI upstream for the bridge's proxy tests (run with uvicorn on 127.0.0.1).

Every request's raw path is recorded so a test can tell whether a request reached it
(`GET /control/hits`); `POST /control/release?key=K` lets a waiting stream go on, so the
tests wait for events rather than for time. The control routes are not in the schema, so
the bridge does not publish them.
"""

import asyncio
import json
from typing import Optional

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

# Served where FrameX serves its own, the proxy's default docs_path.
app = FastAPI(title="upstream", version="1", openapi_url="/api/v1/openapi.json")
hits: list = []
gates: dict = {}


def gate(key: str) -> asyncio.Event:
    if key not in gates:
        gates[key] = asyncio.Event()
    return gates[key]


@app.middleware("http")
async def record(request: Request, call_next):
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    if not raw.startswith("/control/") and raw != app.openapi_url:
        hits.append(raw)
    return await call_next(request)


@app.get("/control/hits", include_in_schema=False)
async def get_hits():
    return hits


@app.post("/control/release", include_in_schema=False)
async def release(key: str):
    gate(key).set()
    return "released"


@app.get("/api/v1/items/{item_id}")
async def item(item_id: int, q: Optional[str] = None):
    # Keys deliberately out of alphabetical order: the bridge must keep them as sent.
    return {"zeta": 1, "id": item_id, "alpha": 2, "q": q}


@app.get("/api/v1/files/{name}")
async def file(name: str):
    return {"file": name}


@app.get("/api/v1/admin")
async def admin(request: Request):
    return {"admin": True, "authorization": request.headers.get("authorization")}


@app.get("/api/v1/sections/{section}/info")
async def section(section: str):
    return {"section": section}


class Item(BaseModel):
    id: int
    name: str = "thing"


@app.post("/api/v1/create", status_code=201)
async def create(item: Item):
    return {"got": item.model_dump()}


@app.post("/api/v1/upload")
async def upload(file: UploadFile = File(...), note: str = Form("")):
    content = await file.read()
    return {"filename": file.filename, "size": len(content), "note": note,
            "text": content.decode("utf-8", "replace")}


@app.get("/api/v1/teapot")
async def teapot():
    return JSONResponse({"detail": "I'm a teapot", "b": 1, "a": 2}, status_code=418)


@app.get("/api/v1/missing")
async def missing():
    raise HTTPException(status_code=404, detail="no such thing")


@app.get("/api/v1/boom")
async def boom():
    raise RuntimeError("upstream failure")


@app.get("/api/v1/framex")
async def framex():
    return {"status": 200, "message": "success", "timestamp": "2026-01-01 00:00:00",
            "data": {"v": 1, "a": 0}}


@app.get("/api/v1/headers")
async def headers(request: Request):
    return {"x-custom": request.headers.get("x-custom"),
            "authorization": request.headers.get("authorization")}


@app.get("/api/v1/slow")
async def slow(seconds: float = 0.0):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def event(kind: str, data) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


@app.get("/api/v1/sse")
async def sse(count: int = 3, gap: float = 0.0):
    async def gen():
        for i in range(count):
            if i and gap:
                await asyncio.sleep(gap)
            yield event("message_chunk", {"content": str(i)})
        yield event("finish", {})
    return StreamingResponse(gen(), media_type="text/event-stream")


@app.get("/api/v1/sse_hang")
async def sse_hang(key: str = "hang"):
    async def gen():
        yield event("message_chunk", {"content": "first"})
        await gate(key).wait()
        yield event("finish", {})
    return StreamingResponse(gen(), media_type="text/event-stream")


@app.get("/api/v1/sse_cut")
async def sse_cut(key: str = "cut"):
    async def gen():
        yield event("message_chunk", {"content": "first"})
        await gate(key).wait()
        yield "event: message_chunk\ndata: {\"content\": \"par"
        raise RuntimeError("the upstream dies midway")
    return StreamingResponse(gen(), media_type="text/event-stream")


@app.get("/api/v1/ndjson")
async def ndjson(key: str = "ndjson"):
    async def gen():
        yield json.dumps({"n": 1}) + "\n"
        await gate(key).wait()
        yield json.dumps({"n": 2}) + "\n"
        yield json.dumps({"n": 3}) + "\n"
    return StreamingResponse(gen(), media_type="application/x-ndjson")


@app.get("/api/v1/echo")
async def shadowed(message: str = ""):
    # The bridge's echo plugin serves this path: this one must never be reached.
    return {"upstream echo": message}


@app.post("/api/v1/echo")
async def echo_post(item: Item):
    # Another method on a path the bridge serves locally: this one is the upstream's.
    return {"posted": item.id}
