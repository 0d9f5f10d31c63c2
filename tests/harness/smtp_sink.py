#!/usr/bin/env python3
"""smtp_sink.py -- a real SMTP server (aiosmtpd) for forewarn's integration tests.

Every accepted message is stored in --dir as <seq>-<random>.eml (raw DATA bytes,
dot-unstuffed, CRLF line endings as sent) next to <seq>-<random>.json holding the
envelope. Both are written to '.'-prefixed temp names and renamed; the .json is
renamed before the .eml, so a reader that sees the .eml can read the .json.

Options simulate failure modes: STARTTLS (optionally required), AUTH PLAIN/LOGIN,
transient/permanent DATA failures (--fail-first/--fail-code) and a hung server
(--hang). Prints "READY <port>" on stdout once listening; exits 0 on SIGTERM/SIGINT.

Usage: python3 smtp_sink.py --port PORT --dir DIR [--host 127.0.0.1]
         [--tls-cert CERT.pem --tls-key KEY.pem] [--require-starttls]
         [--auth-user U --auth-password P] [--fail-first N] [--fail-code 451]
         [--fail-reply TEXT] [--hang]
         [--quiet]
Needs Python 3.11 and aiosmtpd 1.4.6 (stdlib otherwise).
"""
import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

HOSTNAME = "smtp-sink.test"  # fixed, so that socket.getfqdn() is never called


def log(msg):
    print(f"smtp_sink: {msg}", file=sys.stderr, flush=True)


class SinkHandler:
    def __init__(self, args):
        self.dir = args.dir
        self.fail_left = args.fail_first
        code = args.fail_code
        text = "4.3.0 try again later" if 400 <= code < 500 else "5.3.0 rejected (smtp_sink --fail-code)"
        if args.fail_reply:
            text = args.fail_reply
        self.fail_reply = f"{code} {text}"
        self.advertise_auth = args.auth_user is not None
        self.quiet = args.quiet
        self.seq = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.advertise_auth:  # do not tempt clients into AUTH we would refuse
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.fail_left > 0:
            self.fail_left -= 1
            reply = self.fail_reply.replace("{rcpt}", ", ".join(envelope.rcpt_tos))
            log(f"rejecting DATA ({self.fail_left} failures left)")
            return reply
        self.seq += 1
        stem = f"{self.seq:06d}-{secrets.token_hex(4)}"
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth_user": (session.auth_data.login.decode("utf-8", "replace")
                          if session.authenticated and session.auth_data else None),
        }
        write_atomic(self.dir, stem + ".json", json.dumps(meta, indent=2).encode())
        write_atomic(self.dir, stem + ".eml", envelope.original_content)
        if not self.quiet:
            log(f"stored {stem}.eml from {envelope.mail_from} to {envelope.rcpt_tos}")
        return "250 2.0.0 OK queued as " + stem


def write_atomic(directory, name, data):
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, name))


def make_authenticator(user, password):
    want_user, want_pass = user.encode(), password.encode()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (mechanism in ("PLAIN", "LOGIN")
              and hmac.compare_digest(auth_data.login, want_user)
              and hmac.compare_digest(auth_data.password, want_pass))
        # handled=False without message => aiosmtpd replies "535 5.7.8 ..."
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
    return authenticator


async def hang_client(reader, writer):
    # Greet, then read and discard everything forever without answering.
    writer.write(f"220 {HOSTNAME} ESMTP smtp_sink (hanging)\r\n".encode())
    await writer.drain()
    try:
        while await reader.read(4096):
            pass
    except (asyncio.CancelledError, ConnectionError):
        pass  # shutdown or client reset: just drop the connection quietly
    finally:
        writer.close()


async def main(args):
    loop = asyncio.get_running_loop()
    if args.hang:
        server = await asyncio.start_server(hang_client, args.host, args.port)
    else:
        os.makedirs(args.dir, exist_ok=True)
        tls = None
        if args.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        handler = SinkHandler(args)
        kw = dict(hostname=HOSTNAME, tls_context=tls, require_starttls=args.require_starttls,
                  enable_SMTPUTF8=True, decode_data=False, loop=loop)
        if args.auth_user is not None:
            kw.update(auth_required=True, auth_require_tls=tls is not None,
                      authenticator=make_authenticator(args.auth_user, args.auth_password))
        server = await loop.create_server(lambda: SMTP(handler, **kw), args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await stop.wait()
    server.close()
    log("stopped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="SMTP sink for forewarn integration tests")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", help="directory for received messages (required unless --hang)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--auth-user")
    p.add_argument("--auth-password")
    p.add_argument("--fail-first", type=int, default=0, metavar="N")
    p.add_argument("--fail-code", type=int, default=451)
    p.add_argument("--fail-reply", metavar="TEXT",
                   help="the failure reply's text after the code; {rcpt} is replaced by the recipients "
                        "(real servers echo them: '5.1.1 <{rcpt}>: Recipient address rejected')")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not log each stored message")
    a = p.parse_args(argv)
    if not a.hang and not a.dir:
        p.error("--dir is required")
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.require_starttls and not a.tls_cert:
        p.error("--require-starttls needs --tls-cert/--tls-key")
    if (a.auth_user is None) != (a.auth_password is None):
        p.error("--auth-user and --auth-password go together")
    if not 400 <= a.fail_code <= 599:
        p.error("--fail-code must be a 4xx or 5xx code")
    return a


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="smtp_sink[%(name)s] %(levelname)s %(message)s")
    # aiosmtpd logs these per connection/AUTH; plaintext AUTH without a cert is intended.
    noise = ("deprecated", "auth_require_tls == False")
    logging.getLogger("mail.log").addFilter(lambda r: not any(n in r.getMessage() for n in noise))
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    asyncio.run(main(args))
