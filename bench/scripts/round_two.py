#!/usr/bin/env python3
"""Before/after figures for hardening round two (issue 14), over real sockets on loopback.

    python3 bench/scripts/round_two.py OLD_PALISADE NEW_PALISADE

Runs each binary as a child process (limits lifted as palisade-bench does, except the ones
measured) and prints, for each:

1. one address, 300 idle TCP connections with MAX_CONNECTIONS=300: how many the gateway still
   holds after a second, and whether another address (127.0.0.2) still gets its 101;
2. 1 000 members of one room that never read (4 KiB receive buffers) while a sender sends
   4 000-byte bodies of `<` (24 KB frames once escaped) for 10 s: the gateway's peak RSS, and
   how many of the 1 000 were closed with 4007;
3. MEMORY_HIGH_WATERMARK at the idle RSS plus 16 MiB, then 6 000 unauthenticated sockets: the
   RSS the gateway stopped at (it sheds past the watermark) and whether the first joined
   member could still chat.

Nothing here is a pass/fail test (tests/hardening.rs and tests/memory.rs are); these are the
figures the closing note of issue 14 reports.
"""
import asyncio, atexit, base64, hmac, hashlib, json, os, resource, socket, struct, subprocess, sys, tempfile, time

SECRET = "round-two-figures-secret-round-two"
ORIGIN = "http://figures.test"
LIFTED = {
    "MAX_CONNECTIONS": "19000", "MAX_CONNECTIONS_PER_IP": "19000",
    "CONNECT_RATE_PER_SEC": "1000000", "CONNECT_BURST": "1000000",
    "MAX_SESSIONS_PER_USER": "100000", "MSG_RATE_PER_SEC": "1000000", "MSG_BURST": "1000000",
    "USER_MSG_RATE_PER_SEC": "1000000", "USER_MSG_BURST": "1000000",
    "CONTROL_RATE_PER_SEC": "1000000", "CONTROL_BURST": "1000000", "BAN_STRIKES": "1000000",
    "MAX_TRACKED_CLIENTS": "1000000", "METRICS_PORT": "0", "LOG_LEVEL": "warn",
    "AUTH_TIMEOUT_MS": "60000", "JOIN_TIMEOUT_MS": "60000",
}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, extra):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "BIND_ADDR": "127.0.0.1",
           "ALLOWED_ORIGINS": ORIGIN, "JWT_DECODE_SECRET": SECRET, **LIFTED, **extra}
    if env["METRICS_PORT"] != "0":
        env["METRICS_PORT"] = str(port + 1)
    child = subprocess.Popen([binary, "serve"], env=env, stdout=open(os.environ.get("FIGURES_LOG", os.devnull), "a"),
                             stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    atexit.register(child.kill)  # also when a figure fails half way
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return child, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{binary} did not start")


def rss_mib(child):
    with open(f"/proc/{child.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slow_consumer_closes(port):
    """The gateway's own count of sessions it closed with 4007, from its metrics port."""
    with socket.create_connection(("127.0.0.1", port + 1), timeout=5) as admin:
        admin.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := admin.recv(1 << 16):
            text += chunk
    for line in text.decode().splitlines():
        if line.startswith('palisade_closes_total{initiator="server",code="4007"}'):
            return int(float(line.split()[-1]))
    return 0


def frame(opcode, payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + masked


async def upgrade(port, source="127.0.0.1", rcvbuf=None):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write((f"GET / HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head.split(b" ")[1] == b"101"


async def send_json(writer, value):
    writer.write(frame(1, json.dumps(value).encode()))
    await writer.drain()


async def join(port, sub, room, rcvbuf=None):
    reader, writer, ok = await upgrade(port, rcvbuf=rcvbuf)
    assert ok
    await send_json(writer, {"type": "auth", "body": token(sub)})
    await send_json(writer, {"type": "join", "room": room})
    return reader, writer


async def one_address(binary):
    child, port = start(binary, {"MAX_CONNECTIONS": "300", "MAX_CONNECTIONS_PER_IP": "50",
                                 "HEADER_READ_TIMEOUT_MS": "30000"})
    idle = []
    for _ in range(300):
        idle.append(socket.create_connection(("127.0.0.1", port)))
    await asyncio.sleep(1)
    held = 0
    for s in idle:
        s.setblocking(False)
        try:
            s.recv(1)  # a refusal's response, or the end of a closed connection
        except BlockingIOError:
            held += 1  # nothing to read: the gateway still holds it open
        except OSError:
            pass
    try:
        _, _, ok = await upgrade(port, source="127.0.0.2")
    except Exception:
        ok = False
    child.kill()
    return f"one address holds {held} of 300 idle connections; another address upgrades: {ok}"


async def non_readers(binary):
    # The sender is a member too: when the 1 000 are closed at once it is sent 1 000 userleave
    # frames in one burst, more than the default 256-frame queue holds even while it reads.
    child, port = start(binary, {"OUTBOUND_QUEUE_FRAMES": "4096", "METRICS_PORT": "1"})
    members = []
    for n in range(1000):
        members.append(await join(port, f"m{n}", "busy", rcvbuf=4096))
    sender_reader, sender = await join(port, "sender", "busy")

    async def drain():
        while await sender_reader.read(1 << 16):
            pass

    draining = asyncio.ensure_future(drain())
    base, peak = rss_mib(child), 0.0
    body = "<" * 4000
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for _ in range(20):
            await send_json(sender, {"type": "message", "body": body})
        await asyncio.sleep(0.1)
        peak = max(peak, rss_mib(child))
    closed = slow_consumer_closes(port)
    draining.cancel()
    child.kill()
    return (f"1 000 non-reading members: RSS {base:.0f} MiB -> peak {peak:.0f} MiB, "
            f"{closed} closed as slow consumers (4007)")


async def watermark(binary):
    probe, _ = start(binary, {})
    time.sleep(0.5)
    idle_rss = rss_mib(probe)
    probe.kill()
    mark = int((idle_rss + 16) * 1024)
    child, port = start(binary, {"MEMORY_HIGH_WATERMARK": f"{mark}KiB"})
    reader, writer = await join(port, "alice", "kept")
    bob, bob_writer = await join(port, "bob", "kept")
    held, refused = [], 0
    for _ in range(6000):
        try:
            r, w, ok = await upgrade(port)
        except Exception:
            refused += 1
            continue
        if ok:
            held.append((r, w))
        else:
            refused += 1
    stopped_at = rss_mib(child)
    await send_json(writer, {"type": "message", "body": "still here"})
    heard = b""
    try:
        while b"still here" not in heard:
            chunk = await asyncio.wait_for(bob.read(1 << 16), 5)
            if not chunk:
                break
            heard += chunk
    except Exception:
        pass
    child.kill()
    bob_writer.close()
    return (f"watermark {mark // 1024} MiB: held {len(held)} sockets, refused {refused}, "
            f"RSS {stopped_at:.0f} MiB; members still chat: {b'still here' in heard}")


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for label, binary in (("before", sys.argv[1]), ("after", sys.argv[2])):
        print(f"== {label}: {binary}")
        for figure in (one_address, non_readers, watermark):
            print("  ", await figure(binary), flush=True)


asyncio.run(main())
