"""Reading request bodies at the edge, the same way on every route: JSON that must parse (not too deep,
proper UTF-8) into a model, and multipart forms whose text fields must be UTF-8 (never reinterpreted as
Latin-1) and whose single-valued fields must appear once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from s3seg.errors import DuplicateField, InvalidText, UsageError

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request) -> Any:
    """The body as JSON; not JSON (or nested too deep to parse) is a :class:`UsageError`."""
    data = await request.body()
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise UsageError("body is not UTF-8 JSON", hint="send the JSON body encoded as UTF-8") from e
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise UsageError(f"body is not valid JSON: {reason}") from e


async def read_model(request: Request, model: type[M]) -> M:
    """The JSON body validated as ``model``."""
    return model.model_validate(await read_json(request))


class _StrictParser(MultiPartParser):
    """Starlette's parser, except that a text field that is not valid in its charset is refused instead of
    being read as Latin-1, and that with a ``folder`` each file part is written there as it arrives
    (``upload-N``), never held in memory: one chunk at a time, whatever the file's size."""

    def __init__(self, *args: Any, folder: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._folder = folder

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if self._folder is not None and part.file is not None:
            named = open(self._folder / f"upload-{self._current_files}", "w+b")  # noqa: SIM115 (the form closes it)
            self._files_to_close_on_error.append(named)  # type: ignore[arg-type]
            part.file.file.close()  # the parser's in-memory spool, unused
            part.file.file = named

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError) as e:
                raise InvalidText(
                    f"multipart field `{part.field_name}` is not valid {self._charset or 'utf-8'} text",
                    hint="send form fields as UTF-8",
                ) from e
        super().on_part_end()


@asynccontextmanager
async def read_form(
    request: Request, *, max_files: int, max_fields: int, folder: Path | None = None
) -> AsyncIterator[FormData]:
    """The multipart body (its temporary files closed on exit); a malformed body is a :class:`UsageError`.
    ``folder``: files are written there (and left there: the caller removes the folder)."""
    parser = _StrictParser(request.headers, request.stream(), max_files=max_files, max_fields=max_fields, folder=folder)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UsageError(f"malformed multipart body: {e.message}") from e
    except KeyError as e:  # no Content-Type boundary parameter
        raise UsageError("malformed multipart body: no boundary") from e
    try:
        yield form
    finally:
        await form.close()


def single(form: FormData, name: str) -> str | UploadFile | None:
    """The one value of field ``name`` (``None`` when absent); several are a :class:`DuplicateField`."""
    values = form.getlist(name)
    if len(values) > 1:
        raise DuplicateField(f"multipart field `{name}` given {len(values)} times; it may appear once")
    return values[0] if values else None


def text_fields(form: FormData, name: str) -> list[str]:
    """Every text value of a repeatable field ``name``; a file where text belongs is a :class:`UsageError`."""
    values = form.getlist(name)
    if any(not isinstance(v, str) for v in values):
        raise UsageError(f"multipart field `{name}` must be text, not a file")
    return [v for v in values if isinstance(v, str)]


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads ``model`` from its JSON body itself (after checking who
    is asking); the schema is a reference that the app's OpenAPI document resolves in its components."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def resolve_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Put ``models`` (the bodies routes read themselves) and the models they use into the components of
    ``app``'s OpenAPI document, so that every ``$ref`` of it resolves; and leave each operation only the
    refusals its route declares (FastAPI adds a 422 of its own shape to every route with parameters, even
    where none can fail; the routes' own 422 is the error envelope)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        _drop_default_refusals(doc)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components.setdefault(model.__name__, schema)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_default_refusals(doc: dict[str, Any]) -> None:
    default = "#/components/schemas/HTTPValidationError"
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == default:
                del operation["responses"]["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
