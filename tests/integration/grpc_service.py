"""A gRPC test service on python3-grpcio without protoc: generic method
handlers with identity (bytes) serializers, service "test.Echo".

Methods (request/response payloads are raw bytes):
  Unary         echo; b"meta" -> also initial + trailing metadata
  Fail          abort NOT_FOUND "no such thing" before anything is sent
                (trailers-only response)
  Sleep         sleep up to 2 s unless cancelled; records the cancellation
  ServerStream  request b"<n>" -> n messages b"msg-<i>", then OK; b"<n>:fail"
                -> n messages then NOT_FOUND "gone after <n>" in the trailers
  ClientStream  -> b"<count>:<total bytes>"
  Bidi          echo every message
  Forever       server stream of messages until cancelled (records it)
"""
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"
MAX_MSG = 16 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MSG),
                ("grpc.max_receive_message_length", MAX_MSG)]


def ident(b):
    return b


class Service:
    def __init__(self):
        self.lock = threading.Lock()
        self.metadata = []          # invocation metadata of every Unary call
        self.cancelled = {}         # method -> threading.Event
        for m in ("Sleep", "Forever", "Bidi"):
            self.cancelled[m] = threading.Event()
        self.sleep_finished = threading.Event()
        self.forever_started = threading.Event()

    def _watch(self, name, context):
        ev = self.cancelled[name]

        def cb():
            if context.is_active():
                return
            ev.set()
        context.add_callback(cb)

    def unary(self, req, context):
        with self.lock:
            self.metadata.append(tuple((k, v) for k, v in context.invocation_metadata()))
        if req == b"meta":
            context.send_initial_metadata((("x-initial", "init-value"),))
            context.set_trailing_metadata((("x-trailing", "trail-value"),))
        return req

    def fail(self, req, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def sleep(self, req, context):
        self._watch("Sleep", context)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if not context.is_active():
                self.cancelled["Sleep"].set()
                return b""
            time.sleep(0.01)
        self.sleep_finished.set()
        return b"slept"

    def server_stream(self, req, context):
        s = req.decode()
        fail = s.endswith(":fail")
        n = int(s.split(":")[0])
        for i in range(n):
            yield b"msg-%d" % i
        if fail:
            context.abort(grpc.StatusCode.NOT_FOUND, "gone after %d" % n)

    def client_stream(self, it, context):
        count = total = 0
        for m in it:
            count += 1
            total += len(m)
        return b"%d:%d" % (count, total)

    def bidi(self, it, context):
        self._watch("Bidi", context)
        for m in it:
            yield m

    def forever(self, req, context):
        self._watch("Forever", context)
        self.forever_started.set()
        i = 0
        while context.is_active():
            yield b"tick-%d" % i
            i += 1
            time.sleep(0.02)
        self.cancelled["Forever"].set()


def serve(port=0, workers=64):
    """Start the service on 127.0.0.1:port (0 = any). Returns (server, port, svc)."""
    svc = Service()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(svc.unary, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(svc.fail, ident, ident),
        "Sleep": grpc.unary_unary_rpc_method_handler(svc.sleep, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi, ident, ident),
        "Forever": grpc.unary_stream_rpc_method_handler(svc.forever, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    return server, port, svc


class Client:
    """Callables for every method over one channel."""

    def __init__(self, target):
        self.channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        ch = self.channel
        p = "/%s/" % SERVICE
        self.unary = ch.unary_unary(p + "Unary", ident, ident)
        self.fail = ch.unary_unary(p + "Fail", ident, ident)
        self.sleep = ch.unary_unary(p + "Sleep", ident, ident)
        self.server_stream = ch.unary_stream(p + "ServerStream", ident, ident)
        self.client_stream = ch.stream_unary(p + "ClientStream", ident, ident)
        self.bidi = ch.stream_stream(p + "Bidi", ident, ident)
        self.forever = ch.unary_stream(p + "Forever", ident, ident)

    def close(self):
        self.channel.close()
