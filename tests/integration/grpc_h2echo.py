"""A small HTTP/2 (h2c, prior knowledge) upstream on python3-h2 for the h2
upstream tests: echoes request bodies and can misbehave on purpose.

    srv = H2Echo(mode="echo")        # threads; srv.port; srv.stop()

Every request is answered 200 with x-got-method / x-got-path / x-got-stream /
x-conn headers and the request body as the response body (or, for a path
/bytes/N, N bytes of b"x"). Modes:
  echo        just that
  goaway2     on a connection's 2nd request: GOAWAY(last_stream_id = the
              1st request's stream), the 2nd is never processed; the 1st is
              answered after a short delay (so both are in flight)
  refuse1     the very first request overall gets RST_STREAM(REFUSED_STREAM)
`requests` lists (conn, stream_id, method, path, body_len) of processed ones.
"""
import socket
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events


class H2Echo:
    def __init__(self, mode="echo", delay=0.0):
        self.mode = mode
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.conns = 0
        self.refused = 0
        self.goaways = 0
        self.stopping = False
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                cid = self.conns
            t = threading.Thread(target=self._serve, args=(s, cid), daemon=True)
            t.start()

    def _serve(self, s, cid):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        c = h2.connection.H2Connection(cfg)
        c.initiate_connection()
        wlock = threading.Lock()

        def flush():
            with wlock:
                data = c.data_to_send()
                if data:
                    try:
                        s.sendall(data)
                    except OSError:
                        pass

        flush()
        streams = {}
        nreq = [0]
        first_stream = [None]
        dropped = set()

        def respond(sid, st):
            hdrs = dict(st["headers"])
            path = hdrs.get(":path", "")
            body = bytes(st["body"])
            if path.startswith("/bytes/"):
                body = b"x" * int(path.split("/")[2])
            extra = []
            if path.startswith("/fields/"):  # N extra response fields x-f-0 .. x-f-(N-1)
                extra = [("x-f-%d" % i, "v%d" % i) for i in range(int(path.split("/")[2]))]
            with wlock:
                try:
                    c.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream"),
                                         ("x-got-method", hdrs.get(":method", "")),
                                         ("x-got-path", path), ("x-got-stream", str(sid)),
                                         ("x-conn", str(cid)),
                                         ("x-got-cl", hdrs.get("content-length", "-"))] + extra)
                except Exception:
                    return
            # send respecting flow control
            off = 0
            while off < len(body) and not self.stopping:
                with wlock:
                    try:
                        win = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
                    except Exception:
                        return
                    if win > 0:
                        chunk = body[off:off + win]
                        c.send_data(sid, chunk)
                        off += len(chunk)
                flush()
                if win <= 0:
                    time.sleep(0.005)
            with wlock:
                try:
                    c.end_stream(sid)
                except Exception:
                    pass
            flush()

        def finish(sid):
            st = streams.pop(sid, None)
            if st is None or sid in dropped:
                return
            hdrs = dict(st["headers"])
            with self.lock:
                self.requests.append((cid, sid, hdrs.get(":method"), hdrs.get(":path"), len(st["body"])))
            delay = self.delay
            if self.mode == "goaway2" and sid == first_stream[0]:
                delay = max(delay, 0.3)
            # never in the reading thread: respond() waits for flow-control
            # credit, which only the reading thread can see arrive
            threading.Timer(delay, respond, args=(sid, st)).start()

        try:
            while not self.stopping:
                try:
                    data = s.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                with wlock:
                    try:
                        events = c.receive_data(data)
                    except Exception:
                        break
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        nreq[0] += 1
                        sid = ev.stream_id
                        if self.mode == "refuse1":
                            with self.lock:
                                first = self.refused == 0
                                if first:
                                    self.refused += 1
                            if first:
                                dropped.add(sid)
                                with wlock:
                                    c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                                continue
                        if self.mode == "goaway2":
                            if nreq[0] == 1:
                                first_stream[0] = sid
                            elif nreq[0] == 2:
                                dropped.add(sid)
                                with self.lock:
                                    self.goaways += 1
                                # a raw GOAWAY frame: python-h2 would refuse to
                                # answer the first stream after its own GOAWAY
                                flush()
                                frame = (b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" +
                                         first_stream[0].to_bytes(4, "big") + b"\x00\x00\x00\x00")
                                with wlock:
                                    s.sendall(frame)
                                continue
                            else:
                                dropped.add(sid)
                                continue
                        streams[sid] = {"headers": ev.headers, "body": bytearray()}
                        if ev.stream_ended:
                            finish(sid)
                    elif isinstance(ev, h2.events.DataReceived):
                        with wlock:
                            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id in streams:
                            streams[ev.stream_id]["body"] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded):
                        finish(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        pass
                flush()
        finally:
            if self.mode == "goaway2":
                time.sleep(0.5)  # let the delayed answer go out before closing
            try:
                s.close()
            except OSError:
                pass
