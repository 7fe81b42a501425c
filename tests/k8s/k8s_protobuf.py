"""
Decode the Kubernetes protobuf encoding of a few built-in kinds into JSON-like dicts.

kubectl's typed commands (``kubectl create secret|configmap|namespace``) send
``application/vnd.kubernetes.protobuf`` bodies and do not fall back to JSON on a 415.  This decodes
exactly those kinds (field numbers from k8s.io/api ``generated.proto``); anything else raises
:class:`UnsupportedKind` so the emulator can answer 415 with a hint to use ``kubectl apply -f``.
"""
from __future__ import annotations

import base64
from typing import Any

MAGIC = b'k8s\x00'


class UnsupportedKind(ValueError):
    pass


# Field schemas: number -> (json name, type).  Types: 'string', 'bytes' (base64 in JSON), 'int',
# 'bool', ('message', schema), ('map', value type), ('repeated', type).
_OWNER_REFERENCE = {5: ('apiVersion', 'string'), 1: ('kind', 'string'), 3: ('name', 'string'),
                    4: ('uid', 'string'), 6: ('controller', 'bool'), 7: ('blockOwnerDeletion', 'bool')}
_OBJECT_META = {
    1: ('name', 'string'), 2: ('generateName', 'string'), 3: ('namespace', 'string'),
    5: ('uid', 'string'), 6: ('resourceVersion', 'string'), 7: ('generation', 'int'),
    11: ('labels', ('map', 'string')), 12: ('annotations', ('map', 'string')),
    13: ('ownerReferences', ('repeated', ('message', _OWNER_REFERENCE))),
    14: ('finalizers', ('repeated', 'string')),
}
SCHEMAS: dict[tuple[str, str], dict[int, tuple[str, Any]]] = {
    ('v1', 'Secret'): {1: ('metadata', ('message', _OBJECT_META)), 2: ('data', ('map', 'bytes')),
                       3: ('type', 'string'), 4: ('stringData', ('map', 'string')), 5: ('immutable', 'bool')},
    ('v1', 'ConfigMap'): {1: ('metadata', ('message', _OBJECT_META)), 2: ('data', ('map', 'string')),
                          3: ('binaryData', ('map', 'bytes')), 4: ('immutable', 'bool')},
    ('v1', 'Namespace'): {1: ('metadata', ('message', _OBJECT_META)),
                          2: ('spec', ('message', {1: ('finalizers', ('repeated', 'string'))}))},
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    pos, out = 0, []
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
        out.append((field, wire, value))
    return out


def _scalar(kind: Any, value: Any) -> Any:
    if kind == 'string':
        return value.decode('utf-8')
    if kind == 'bytes':
        return base64.b64encode(value).decode()
    if kind == 'int':
        return value if value < (1 << 63) else value - (1 << 64)
    if kind == 'bool':
        return bool(value)
    if isinstance(kind, tuple) and kind[0] == 'message':
        return _message(value, kind[1])
    raise ValueError(f'unsupported protobuf type {kind!r}')


def _message(buf: bytes, schema: dict[int, tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for field, _, value in _fields(buf):
        if field not in schema:
            continue  # e.g. managedFields, creationTimestamp: ignored on create
        name, kind = schema[field]
        if isinstance(kind, tuple) and kind[0] == 'map':
            entry = {f: v for f, _, v in _fields(value)}
            obj.setdefault(name, {})[entry.get(1, b'').decode()] = _scalar(kind[1], entry.get(2, b''))
        elif isinstance(kind, tuple) and kind[0] == 'repeated':
            obj.setdefault(name, []).append(_scalar(kind[1], value))
        else:
            decoded = _scalar(kind, value)
            if decoded not in ('', 0, False, {}):  # Go's omitempty: zero values are not in the JSON
                obj[name] = decoded
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """Decode an ``application/vnd.kubernetes.protobuf`` body into a JSON-like object."""
    if not body.startswith(MAGIC):
        raise ValueError('not a Kubernetes protobuf envelope')
    unknown = {f: v for f, _, v in _fields(body[len(MAGIC):])}
    type_meta = {f: v.decode() for f, _, v in _fields(unknown.get(1, b''))}
    api_version, kind = type_meta.get(1, ''), type_meta.get(2, '')
    schema = SCHEMAS.get((api_version, kind))
    if schema is None:
        raise UnsupportedKind(f'{api_version}/{kind}')
    obj = _message(unknown.get(2, b''), schema)
    return {'apiVersion': api_version, 'kind': kind, **obj}
