"""Verifies a Palisade webhook in Python (3.8+), standard library only: the signature over the
raw body, compared in constant time, and the timestamp within a tolerance (replays).

    from verify import verify_palisade

    @app.post("/hooks")                      # Flask
    def hooks():
        if not verify_palisade(request.get_data(), request.headers.get("Palisade-Signature"),
                               os.environ["WEBHOOK_SECRET"]):
            abort(400)
        for event in request.get_json()["events"]:
            ...                              # skip ids already seen
        return "", 204
"""
import hashlib
import hmac
import sys
import time


def verify_palisade(raw_body: bytes, header, secret: str, tolerance_secs=300, now=None) -> bool:
    if not header:
        return False
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
        given = bytes.fromhex(parts["v1"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_secs:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).digest()
    return hmac.compare_digest(given, expected)


if __name__ == "__main__":
    # python3 verify.py <signature header> <body file> <secret>: exits 0 if it verifies.
    header, body_file, secret = sys.argv[1:4]
    with open(body_file, "rb") as body:
        sys.exit(0 if verify_palisade(body.read(), header, secret) else 1)
