"""Writes the hand-made seed inputs of each fuzz target into fuzz/corpus/<target>/.

Run from the repository root: python3 fuzz/seeds.py. The fuzzer adds its own finds next to
these; both are replayed by tests/fuzz_corpus.rs.
"""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# client_frame: every frame type, GarinChat's case-insensitive keys, and known-bad shapes.
frames = {
    "auth": '{"type":"auth","body":"a.b.c"}',
    "join": '{"type":"join","username":"bob","room":"lobby"}',
    "join_no_name": '{"type":"join","room":"lobby"}',
    "message": '{"type":"message","body":"hi <b>&amp;</b> \u2028"}',
    "message_empty": '{"type":"message"}',
    "userleave": '{"type":"userleave"}',
    "upper_keys": '{"TYPE":"auth","Body":"x"}',
    "unknown_fields": '{"type":"message","body":"x","extra":[1,{"a":null}],"totalUsers":3}',
    "duplicate_keys": '{"type":"auth","TYPE":"join","room":"abc"}',
    "wrong_types": '{"type":"auth","body":5}',
    "null": "null",
    "array": "[]",
    "string": '"auth"',
    "unknown_type": '{"type":"shout"}',
    "deep": '{"x":' + "[" * 300 + "]" * 300 + "}",
    "escapes": '{"type":"message","body":"\\ud83d\\ude00 \\u0000 \\"q\\""}',
    "truncated": '{"type":"auth","bo',
}
for name, text in frames.items():
    write("client_frame", name, text)


# ws_stream: masked client frames as they arrive after the handshake.
def frame(first, payload, mask=b"\x37\xfa\x21\x3d", length=None):
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


FIN, TEXT, BIN, CONT, CLOSE, PING, PONG = 0x80, 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
streams = {
    "text": frame(FIN | TEXT, frames["auth"].encode()),
    "two_texts": frame(FIN | TEXT, b"one") + frame(FIN | TEXT, b"two"),
    "fragmented": frame(TEXT, b'{"type":') + frame(FIN | CONT, b'"userleave"}'),
    "ping_between_fragments": frame(TEXT, b"ab") + frame(FIN | PING, b"p") + frame(FIN | CONT, b"cd"),
    "close_1000": frame(FIN | CLOSE, struct.pack(">H", 1000) + b"bye"),
    "close_invalid_code": frame(FIN | CLOSE, struct.pack(">H", 1005)),
    "close_one_byte": frame(FIN | CLOSE, b"\x03"),
    "binary": frame(FIN | BIN, b"\x00\x01"),
    "rsv_bits": frame(FIN | 0x40 | TEXT, b"x"),
    "reserved_opcode": frame(FIN | 0x3, b"x"),
    "huge_length": frame(FIN | TEXT, b"", length=1 << 63),
    "over_limit": frame(FIN | TEXT, b"", length=5000),
    "orphan_continuation": frame(FIN | CONT, b"x"),
    "continuation_flood": frame(TEXT, b"x") + b"".join(frame(CONT, b"x") for _ in range(100)),
    "invalid_utf8": frame(FIN | TEXT, b"\xff\xfe"),
    "utf8_split": frame(TEXT, "é".encode()[:1]) + frame(FIN | CONT, "é".encode()[1:]),
    "big_ping": frame(FIN | PING, b"p" * 126),
    "fragmented_ping": frame(PING, b"p"),
    "unmasked": bytes([FIN | TEXT, 2]) + b"hi",
    "truncated_header": bytes([FIN | TEXT, 0x80 | 126, 0x10]),
    "ping_then_huge_length": frame(FIN | PING, b"") + frame(FIN | BIN, b"", length=1 << 50),
}
for name, data in streams.items():
    write("ws_stream", name, data)

# ws_chunks: the same streams behind a byte that seeds how they are cut into pieces.
os.makedirs(os.path.join(ROOT, "ws_chunks"), exist_ok=True)
for seed, (name, data) in enumerate(streams.items()):
    write("ws_chunks", name, bytes([seed * 37 % 256]) + data)


# token: shapes of tokens, none of them valid for the fuzz secret.
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header, claims, key=b"not-the-fuzz-secret"):
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


claims = {"sub": "alice", "exp": 4102444800}
tokens = {
    "wrong_key": hs256({"alg": "HS256", "typ": "JWT"}, claims),
    "alg_none": b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".",
    "crit": hs256({"alg": "HS256", "crit": ["exp"]}, claims),
    "jku": hs256({"alg": "HS256", "jku": "http://127.0.0.1:9/keys"}, claims),
    "rs256_header": hs256({"alg": "RS256", "kid": "k"}, claims),
    "two_segments": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0",
    "four_segments": "a.b.c.d",
    "bad_base64": "!!!.@@@.###",
    "empty": "",
    "garbage": "not a token",
    "long": "a" * 5000,
    "exp_string": hs256({"alg": "HS256"}, {"sub": "a", "exp": "tomorrow"}),
}
for name, text in tokens.items():
    write("token", name, text)

# Byte 1 first: the rest are claims, signed with the fuzzing secret by the harness.
signed_claims = {
    "signed_valid": {"sub": "alice", "exp": 4102444800},
    "signed_expired": {"sub": "alice", "exp": 1000},
    "signed_no_exp": {"sub": "alice"},
    "signed_exp_string": {"sub": "alice", "exp": "soon"},
    "signed_future_nbf": {"sub": "alice", "exp": 4102444800, "nbf": 4102444000},
    "signed_huge_exp": {"sub": "alice", "exp": 1e19},
    "signed_sub_number": {"sub": 7, "exp": 4102444800},
    "signed_long_sub": {"sub": "x" * 300, "exp": 4102444800},
    "signed_name_tricks": {"sub": "bob", "exp": 4102444800, "name": "\u202e\u200b  Bo\tb \u0301"},
}
for name, claims in signed_claims.items():
    write("token", name, b"\x01" + json.dumps(claims).encode())

# session: scripts of (op, client, argument, ...) bytes; see fuzz/harness.rs `steps`.
scripts = {
    "auth_join_chat_leave": [0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 1, 1, 1, 2, 1, 0, 3, 0, 7, 4, 0, 7],
    "no_auth_timeout": [0, 0, 5, 0, 200, 5, 0, 200],
    "message_before_join": [0, 0, 1, 0, 0, 3, 0, 1],
    "userleave_before_join": [0, 0, 1, 0, 0, 4, 0],
    "duplicate_join": [0, 0, 1, 0, 0, 2, 0, 0, 2, 0, 1],
    "garbage_token": [0, 0, 1, 0, 4],
    "close_codes": [0, 0, 1, 0, 0, 2, 0, 0, 0, 1, 1, 1, 1, 2, 1, 0, 6, 0, 3, 6, 1, 2],
    "reset": [0, 0, 1, 0, 0, 2, 0, 0, 0, 1, 1, 1, 1, 2, 1, 0, 7, 0, 3, 1, 5],
    "junk_frames": [0, 0, 8, 0, 7, 65, 66, 67, 68, 69, 70, 71, 9, 0, 2, 0, 3, 1, 2, 3],
    "trusted_name": [0, 0, 1, 0, 2, 10, 0, 9],
    "many_clients": [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 0, 2, 1, 0, 2, 2, 0, 3, 0, 9, 5, 0, 50],
    # Two protocol v2 clients (op 11): one joins three rooms (the third, "x", is refused with an
    # error frame), one two; each chats in one of them; the second leaves one and stays in the
    # other.
    "v2_many_rooms": [11, 0, 11, 0, 1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 0, 1, 2, 0, 2, 2, 1, 0, 2, 1, 1, 3, 0, 7, 3, 1, 8, 4, 1],
}
for name, script in scripts.items():
    write("session", name, bytes(script))
print("seeds written")
