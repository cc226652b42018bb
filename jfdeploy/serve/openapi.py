"""The OpenAPI 3.1 schema of the server, written by hand (GET /openapi.json); the session options come from
``sessions.OPTION_FIELDS``, so the schema lists exactly the options the server accepts.

OpenAPI has no WebSocket operations: the stream is a GET with a 101 answer and its protocol in the text.
"""

from __future__ import annotations

from typing import Any

from jfdeploy.serve.sessions import OPTION_FIELDS

ERROR = {"$ref": "#/components/schemas/Error"}
SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


FRAME_ERRORS = {
    "400": _error("not an image, a frame of another size than the session's, a bad mask (size, colours, labels "
                  "outside 0..255), more objects than max_objects"),
    "401": _error("missing or wrong API key"),
    "404": _error("no such session (closed, or evicted after --session-ttl seconds idle)"),
    "413": _error("request body over --max-body-mb"),
    "429": _error("the session has --max-queue frames waiting (Retry-After)"),
    "503": _error("the server is draining after SIGTERM (Retry-After)"),
}  # fmt: skip


def openapi_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict."""
    options = {name: {"type": kind, "description": text} for name, (kind, text) in OPTION_FIELDS.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jfdeploy serve", "version": "1",
                 "description": "JointFormer video object segmentation, one VideoPredictor per session. Every error "
                 "is one line of JSON: {\"error\": \"...\"}. With --api-key, every path but /, /healthz and "
                 "/openapi.json needs Authorization: Bearer KEY (the stream also takes ?access_token=KEY)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "SessionOptions": {"type": "object", "properties": options, "additionalProperties": False},
                "Session": {"type": "object", "required": ["session"], "properties": {
                    "session": {"type": "string"}, "options": {"type": "object"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/": {"get": {"summary": "the page: stream a video file and see its masks", "security": [],
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {
                "200": {"description": "{\"status\": \"ok\", \"sessions\": n}"},
                "503": {"description": "{\"status\": \"draining\"} after SIGTERM"}}}},
            "/openapi.json": {"get": {"summary": "this schema", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "text exposition format", "content": {"text/plain": {}}},
                "401": _error("missing or wrong API key")}}},
            "/sessions": {"post": {
                "summary": "open a session (one video)",
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SessionOptions"}}}},
                "responses": {
                    "201": {"description": "the session", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Session"}}}},
                    "400": _error("an unknown option, or one that cannot apply on this server"),
                    "401": _error("missing or wrong API key"),
                    "503": _error("--max-sessions sessions are open, or the server is draining (Retry-After)"),
                }}},
            "/sessions/{session_id}": {"delete": {
                "summary": "close a session (its memory is freed)", "parameters": [SESSION_ID],
                "responses": {"200": {"description": "{\"session\": id, \"frames\": n}"},
                              "401": _error("missing or wrong API key"), "404": _error("no such session")}}},
            "/sessions/{session_id}/frames": {"post": {
                "summary": "segment the session's next frame",
                "parameters": [SESSION_ID, {"name": "probabilities", "in": "query", "schema": {"type": "string",
                               "enum": ["0", "1", "true", "false"]},
                               "description": "1: answer an npz of labels, object_ids, probabilities"}],
                "requestBody": {"required": True, "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary", "description": "the frame, PNG or JPEG"},
                        "mask": {"type": "string", "format": "binary", "description": "a palette / grayscale label "
                                 "PNG of the frame's size: new labels start tracking, known ones are corrected"},
                        "probabilities": {"type": "string", "description": "1: answer the npz"}}}}}},
                "responses": {
                    "200": {"description": "the label map (labels as given in the masks; headers X-Frame-Index, "
                            "X-Object-Ids)", "content": {
                                "image/png": {"schema": {"type": "string", "format": "binary"}},
                                "application/x-npz": {"schema": {"type": "string", "format": "binary",
                                    "description": "labels uint8 HxW, object_ids int32 [O], probabilities float32 "
                                    "(1+O)xHxW"}}}},
                    **FRAME_ERRORS,
                }}},
            "/sessions/{session_id}/stream": {"get": {
                "summary": "WebSocket stream of frames",
                "description": "Upgrade to a WebSocket. Binary messages are frames (PNG / JPEG); a text message "
                "{\"mask\": \"<base64 PNG>\"} gives a label map for the next frame. Each frame gets one reply, in "
                "order: a binary palette PNG, or a text {\"error\", \"status\", \"frame\"} for that frame alone. "
                "Close codes: 4401 wrong key, 4404 no such session, 1013 draining, 1001 drained.",
                "parameters": [SESSION_ID, {"name": "access_token", "in": "query", "schema": {"type": "string"},
                               "description": "the API key, for browsers (which cannot set headers)"}],
                "responses": {"101": {"description": "switching to the WebSocket protocol"}}}},
        },
    }  # fmt: skip
