#!/usr/bin/env python3
"""A fake of the Azure Key Vault secrets REST API (and of the Entra ID token endpoint), for
the azure-kv sink's tests, with the keys API's create, wrapkey and unwrapkey for master keys
held in Key Vault (azure-kv-key://): no Key Vault emulator exists.

It speaks HTTPS with the certificate it is given and behaves like the real service where the
sink depends on it:

- Every Key Vault request without a valid bearer token gets 401 with the challenge
  ``Bearer authorization="https://login.microsoftonline.com/TENANT", resource="https://vault.azure.net"``;
  tokens come from ``POST /TENANT/oauth2/v2.0/token`` (client credentials), only for the client
  ids and secrets it was started with; like Entra ID it issues them for any one scope, and like
  Key Vault it accepts only those issued for ``https://vault.azure.net/.default``.
- Names must match ``[0-9A-Za-z-]{1,127}``; values hold at most 25 KiB; at most 15 tags of at
  most 256 characters.
- Set creates a new version; get/patch work on the latest or a named version; delete moves a
  secret to the deleted (recoverable) state, where setting the name is refused with 409 until it
  is recovered or purged; list pages with ``nextLink``.
- Like the service, deletion, purge and recovery finish in the background (here after
  ``SETTLE`` seconds): until then a purge, or a set of the name, gets 409, and a recovered
  secret reads as not found.

Usage: azure_keyvault.py PORT CERT KEY TENANT CLIENT_ID CLIENT_SECRET
State is in memory.
"""

import base64
import hashlib
import json
import re
import secrets
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
MAX_VALUE = 25 * 1024
MAX_TAGS = 15
MAX_TAG_VALUE = 256

SETTLE = 0.3

LOCK = threading.Lock()
LIVE = {}  # name -> list of versions (dicts), newest last
DELETED = {}  # name -> (versions, deleted_date)
SETTLING = {}  # name -> monotonic time its deletion, purge or recovery finishes
# Access tokens, with the resource each was issued for: Key Vault accepts only its own.
TOKENS = {}
VAULT_SCOPE = "https://vault.azure.net/.default"
# The resource the 401 challenge names; a test sets another (``POST /fake/challenge``) to play
# a squatter on the vault's port choosing the audience of the token it is sent.
CHALLENGE = {"resource": "https://vault.azure.net"}
# Every scope a token was asked for (``GET /fake/scopes``).
SCOPES = []
KEYS = {}  # key name -> {version: (n, e, d)}
# Service principals that sign in with a certificate (``POST /fake/certificate``): client id ->
# (RSA modulus, SHA-1 thumbprint of the certificate, base64url), as Entra ID keeps them.
CERTIFICATES = {}
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# DigestInfo of SHA-256, for checking an RS256 (PKCS #1 v1.5) signature.
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def probable_prime(bits):
    """A random prime of `bits` bits (Miller-Rabin, 40 rounds)."""
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if all(candidate % p for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            r, m = 0, candidate - 1
            while m % 2 == 0:
                r, m = r + 1, m // 2
            for _ in range(40):
                x = pow(secrets.randbelow(candidate - 3) + 2, m, candidate)
                if x in (1, candidate - 1):
                    continue
                for _ in range(r - 1):
                    x = pow(x, 2, candidate)
                    if x == candidate - 1:
                        break
                else:
                    break
            else:
                return candidate


def rsa_key(bits=2048):
    """(n, e, d) of a new RSA key."""
    e = 65537
    while True:
        p, q = probable_prime(bits // 2), probable_prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            return p * q, e, pow(e, -1, phi)


def mgf1(seed, length):
    out = b""
    for counter in range((length + 31) // 32):
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
    return out[:length]


def oaep_encrypt(n, e, message):
    """RSAES-OAEP (RFC 8017) with SHA-256 and MGF1-SHA-256, an empty label."""
    k = (n.bit_length() + 7) // 8
    lhash = hashlib.sha256(b"").digest()
    block = lhash + b"\0" * (k - len(message) - 66) + b"\1" + message
    seed = secrets.token_bytes(32)
    masked_block = bytes(a ^ b for a, b in zip(block, mgf1(seed, k - 33)))
    masked_seed = bytes(a ^ b for a, b in zip(seed, mgf1(masked_block, 32)))
    encoded = int.from_bytes(b"\0" + masked_seed + masked_block, "big")
    return pow(encoded, e, n).to_bytes(k, "big")


def oaep_decrypt(n, d, ciphertext):
    """The message `oaep_encrypt` sealed, or None if it does not decode."""
    k = (n.bit_length() + 7) // 8
    if len(ciphertext) != k or int.from_bytes(ciphertext, "big") >= n:
        return None
    encoded = pow(int.from_bytes(ciphertext, "big"), d, n).to_bytes(k, "big")
    masked_seed, masked_block = encoded[1:33], encoded[33:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, mgf1(masked_block, 32)))
    block = bytes(a ^ b for a, b in zip(masked_block, mgf1(seed, k - 33)))
    rest = block[32:].lstrip(b"\0")
    if encoded[0] != 0 or block[:32] != hashlib.sha256(b"").digest() or not rest.startswith(b"\1"):
        return None
    return rest[1:]


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def pem_der(pem):
    """The DER bytes of the first certificate in a PEM text."""
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))


def assertion_valid(assertion, client_id, audience):
    """Whether a client assertion is a JWT for ``audience`` from ``client_id``, unexpired, naming
    the registered certificate by thumbprint and signed (RS256) by its key."""
    n, thumbprint = CERTIFICATES[client_id]
    try:
        head, body, signature = assertion.split(".")
        header = json.loads(b64url_decode(head))
        claims = json.loads(b64url_decode(body))
        s = int.from_bytes(b64url_decode(signature), "big")
    except (ValueError, KeyError):
        return False
    size = (n.bit_length() + 7) // 8
    digest = hashlib.sha256(f"{head}.{body}".encode()).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(SHA256_INFO) - len(digest) - 3) + b"\x00" + SHA256_INFO + digest
    return (
        header.get("alg") == "RS256"
        and header.get("x5t") == thumbprint
        and claims.get("aud") == audience
        and claims.get("iss") == client_id == claims.get("sub")
        and claims.get("nbf", float("inf")) <= now() + 60
        and claims.get("exp", 0) > now()
        and pow(s, 65537, n).to_bytes(size, "big") == expected
    )


def now():
    return int(time.time())


def settling(name):
    return time.monotonic() < SETTLING.get(name, 0)


def settle(name):
    SETTLING[name] = time.monotonic() + SETTLE


def busy(name):
    return error(409, "Conflict", f"Secret {name} is currently being deleted or recovered.")


def error(status, code, message):
    return status, {"error": {"code": code, "message": message}}


class Server(ThreadingHTTPServer):
    # The sink keeps up to 16 requests in flight, each possibly a new connection.
    request_queue_size = 128
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for the
    # client's delayed ACK, 40 ms a response, which no real service costs.
    disable_nagle_algorithm = True
    config = None

    def setup(self):
        # The TLS handshake happens here, in the connection's thread, not in the accept loop.
        self.request.do_handshake()
        super().setup()

    def log_message(self, *args):
        pass

    def send(self, status, body=None, headers=()):
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return raw

    def base(self):
        return "https://" + self.headers.get("Host", "127.0.0.1")

    def handle_any(self, method):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        raw = self.body()
        tenant, principals = self.config
        if method == "POST" and url.path == f"/{tenant}/oauth2/v2.0/token":
            form = parse_qs(raw.decode())
            client_id = (form.get("client_id") or [None])[0]
            if form.get("client_assertion_type") == [JWT_BEARER]:
                proven = client_id in CERTIFICATES and assertion_valid(
                    (form.get("client_assertion") or [""])[0],
                    client_id,
                    f"{self.base()}/{tenant}/oauth2/v2.0/token",
                )
            else:
                proven = client_id in principals and form.get("client_secret") == [principals[client_id]]
            ok = (
                form.get("grant_type") == ["client_credentials"]
                and proven
                and len(form.get("scope") or []) == 1
            )
            with LOCK:
                SCOPES.append((form.get("scope") or [None])[0])
            if not ok:
                why = (
                    "AADSTS700027: Client assertion failed signature validation."
                    if form.get("client_assertion_type") == [JWT_BEARER]
                    else "AADSTS7000215: Invalid client secret provided."
                )
                return self.send(401, {"error": "invalid_client", "error_description": why})
            # Shaped like Entra ID's: a JWT whose claims say whom it was issued to (unsigned
            # here; Key Vault, this fake, knows its tokens by value).
            claims = {
                "aud": form["scope"][0].removesuffix("/.default"),
                "appid": client_id,
                "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{client_id}")),
                "tid": tenant,
                "idtyp": "app",
            }
            token = ".".join(
                b64url_encode(json.dumps(part).encode())
                for part in ({"alg": "RS256", "typ": "JWT"}, claims)
            ) + "." + secrets.token_urlsafe(24)
            with LOCK:
                TOKENS[token] = form["scope"][0]
            return self.send(
                200,
                {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token},
            )
        if url.path == "/health":
            return self.send(200, {"status": "ok"})
        if url.path == "/fake/challenge" and method == "POST":
            CHALLENGE["resource"] = raw.decode()
            return self.send(204)
        if url.path == "/fake/certificate" and method == "POST":
            registered = json.loads(raw)
            thumbprint = b64url_encode(hashlib.sha1(pem_der(registered["certificate"])).digest())
            with LOCK:
                CERTIFICATES[registered["client_id"]] = (int(registered["modulus"], 16), thumbprint)
            return self.send(204)
        if url.path == "/fake/scopes":
            with LOCK:
                return self.send(200, list(SCOPES))
        auth = self.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and TOKENS.get(auth[7:]) == VAULT_SCOPE):
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{tenant}", '
                f'resource="{CHALLENGE["resource"]}"'
            )
            return self.send(
                401,
                {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}},
                [("WWW-Authenticate", challenge)],
            )
        if not query.get("api-version"):
            return self.send(*error(400, "BadParameter", "The api-version parameter is missing"))
        with LOCK:
            status, body = self.route(method, url.path.rstrip("/").split("/")[1:], query, raw)
        self.send(status, body)

    def route(self, method, parts, query, raw):
        if parts == ["secrets"] and method == "GET":
            return self.list_secrets(query)
        if len(parts) in (3, 4) and parts[0] == "keys" and method == "POST":
            return self.key_operation(parts[1], parts[2] if len(parts) == 4 else "", parts[-1], json.loads(raw or b"{}"))
        if len(parts) in (2, 3) and parts[0] == "secrets":
            name, version = parts[1], (parts[2] if len(parts) == 3 else "")
            if not NAME.match(name):
                return error(400, "BadParameter", f"The secret name '{name}' is invalid")
            if method == "PUT" and not version:
                return self.set_secret(name, json.loads(raw or b"{}"))
            if method == "GET":
                return self.get_secret(name, version)
            if method == "PATCH":
                return self.update_secret(name, version, json.loads(raw or b"{}"))
            if method == "DELETE" and not version:
                return self.delete_secret(name)
        if len(parts) in (2, 3) and parts[0] == "deletedsecrets":
            name = parts[1]
            if len(parts) == 3 and parts[2] == "recover" and method == "POST":
                return self.recover(name)
            if len(parts) == 2 and method == "GET":
                if name not in DELETED:
                    return not_found(name)
                return 200, self.deleted_bundle(name)
            if len(parts) == 2 and method == "DELETE":
                if name not in DELETED:
                    return not_found(name)
                if settling(name):
                    return busy(name)
                del DELETED[name]
                settle(name)
                return 204, None
        return error(400, "BadParameter", f"no such operation: {method} /{'/'.join(parts)}")

    def key_operation(self, name, version, operation, body):
        """Keys: ``create`` an RSA key (a new version each time), then ``wrapkey`` /
        ``unwrapkey`` with RSA-OAEP-256 under it, as the service does."""
        if not NAME.match(name):
            return error(400, "BadParameter", f"The key name '{name}' is invalid")
        if operation == "create" and not version:
            version = uuid.uuid4().hex
            KEYS.setdefault(name, {})[version] = rsa_key()
            return 200, {"key": {"kid": f"{self.base()}/keys/{name}/{version}", "kty": "RSA"}, "attributes": {"enabled": True}}
        versions = KEYS.get(name)
        if not versions or (version and version not in versions):
            return error(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        version = version or max(versions)
        n, e, d = versions[version]
        if body.get("alg") != "RSA-OAEP-256":
            return error(400, "BadParameter", f"unsupported algorithm {body.get('alg')!r}")
        value = b64url_decode(body.get("value") or "")
        if operation == "wrapkey":
            result = oaep_encrypt(n, e, value)
        elif operation == "unwrapkey":
            result = oaep_decrypt(n, d, value)
            if result is None:
                return error(400, "BadParameter", "The parameter is incorrect: decryption failed.")
        else:
            return error(400, "BadParameter", f"no such key operation: {operation}")
        return 200, {"kid": f"{self.base()}/keys/{name}/{version}", "value": b64url_encode(result)}

    def bundle(self, name, version, with_value=True):
        out = {
            "id": f"{self.base()}/secrets/{name}/{version['version']}",
            "attributes": {
                "enabled": True,
                "created": version["created"],
                "updated": version["updated"],
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": version["tags"],
        }
        if version.get("contentType"):
            out["contentType"] = version["contentType"]
        if with_value:
            out["value"] = version["value"]
        return out

    def deleted_bundle(self, name):
        versions, deleted = DELETED[name]
        out = self.bundle(name, versions[-1], with_value=False)
        out.update(
            {
                "recoveryId": f"{self.base()}/deletedsecrets/{name}",
                "deletedDate": deleted,
                "scheduledPurgeDate": deleted + 90 * 86400,
            }
        )
        return out

    def set_secret(self, name, body):
        if settling(name):
            return busy(name)
        if name in DELETED:
            return error(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be "
                "reused; in this state, the secret can only be recovered or purged.",
            )
        value = body.get("value")
        if not isinstance(value, str):
            return error(400, "BadParameter", "Property value is required")
        if len(value.encode()) > MAX_VALUE:
            return error(400, "BadParameter", "Secret value is too large; the maximum is 25 KB")
        tags = body.get("tags") or {}
        if len(tags) > MAX_TAGS or any(len(v) > MAX_TAG_VALUE for v in tags.values()):
            return error(400, "BadParameter", "Too many tags, or a tag value is too long")
        stamp = now()
        version = {
            "version": uuid.uuid4().hex,
            "value": value,
            "tags": tags,
            "contentType": body.get("contentType"),
            "created": stamp,
            "updated": stamp,
        }
        LIVE.setdefault(name, []).append(version)
        return 200, self.bundle(name, version)

    def find(self, name, version):
        versions = LIVE.get(name)
        if not versions or settling(name):
            return None
        if not version:
            return versions[-1]
        return next((v for v in versions if v["version"] == version), None)

    def get_secret(self, name, version):
        found = self.find(name, version)
        if found is None:
            return not_found(name)
        return 200, self.bundle(name, found)

    def update_secret(self, name, version, body):
        found = self.find(name, version)
        if found is None:
            return not_found(name)
        if "tags" in body:
            tags = body["tags"] or {}
            if len(tags) > MAX_TAGS or any(len(v) > MAX_TAG_VALUE for v in tags.values()):
                return error(400, "BadParameter", "Too many tags, or a tag value is too long")
            found["tags"] = tags
        if "contentType" in body:
            found["contentType"] = body["contentType"]
        found["updated"] = now()
        return 200, self.bundle(name, found, with_value=False)

    def delete_secret(self, name):
        if name not in LIVE:
            return not_found(name)
        DELETED[name] = (LIVE.pop(name), now())
        settle(name)
        return 200, self.deleted_bundle(name)

    def recover(self, name):
        if name not in DELETED:
            return not_found(name)
        if settling(name):
            return busy(name)
        versions, _ = DELETED.pop(name)
        LIVE[name] = versions
        settle(name)
        return 200, self.bundle(name, versions[-1], with_value=False)

    def list_secrets(self, query):
        size = int((query.get("maxresults") or ["25"])[0])
        start = int((query.get("$skiptoken") or ["0"])[0])
        names = sorted(LIVE)
        page = names[start : start + size]
        out = {"value": [], "nextLink": None}
        for name in page:
            item = self.bundle(name, LIVE[name][-1], with_value=False)
            item["id"] = f"{self.base()}/secrets/{name}"
            out["value"].append(item)
        if start + size < len(names):
            api = query["api-version"][0]
            out["nextLink"] = f"{self.base()}/secrets?api-version={api}&$skiptoken={start + size}&maxresults={size}"
        return 200, out

    def do_GET(self):
        self.handle_any("GET")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")


def not_found(name):
    return error(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault.",
    )


def main():
    # Then one or more service principals: CLIENT_ID CLIENT_SECRET [CLIENT_ID CLIENT_SECRET ...]
    port, cert, key, tenant = sys.argv[1:5]
    pairs = sys.argv[5:]
    Handler.config = (tenant, dict(zip(pairs[0::2], pairs[1::2])))
    server = Server(("127.0.0.1", int(port)), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.serve_forever()


if __name__ == "__main__":
    main()
