"""The one SOAP call streaming tests need: `undelete()`.

Salesforce's REST API has no undelete resource; clients restore records from the recycle
bin with the SOAP API's `undelete()` (Partner WSDL, `/services/Soap/u/XX.X`) or Apex. The
emulator answers that call so an UNDELETE change event can be produced by a real client.
Every other SOAP operation gets a SOAP fault saying so.
"""

from __future__ import annotations

from typing import Final
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from aiohttp import web

from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.oauth import TokenService
from sfstream_emulator.records import RecordError, RecordStore

_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
_PARTNER_NS: Final = "urn:partner.soap.sforce.com"
_FAULT_NS: Final = "urn:fault.partner.soap.sforce.com"
_HEAD: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{_ENV_NS}" xmlns="{_PARTNER_NS}" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
)
_TAIL: Final = "</soapenv:Body></soapenv:Envelope>"


def _xml(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_HEAD + body + _TAIL, status=status, content_type="text/xml", charset="UTF-8"
    )


def _fault(code: str, message: str) -> web.Response:
    """A SOAP 1.1 fault as Salesforce sends it.

    `faultcode` and `faultstring` are unqualified elements (SOAP 1.1), so this envelope has no
    default namespace; the `sf` prefix used in the fault code is declared, and an `sf:` code
    comes with the `UnexpectedErrorFault` detail carrying `exceptionCode`/`exceptionMessage`.
    """
    detail = ""
    if code.startswith("sf:"):
        exception_code = code[3:]
        exception_message = message.removeprefix(f"{exception_code}: ")
        detail = (
            '<detail><sf:UnexpectedErrorFault xsi:type="sf:UnexpectedErrorFault">'
            f"<sf:exceptionCode>{escape(exception_code)}</sf:exceptionCode>"
            f"<sf:exceptionMessage>{escape(exception_message)}</sf:exceptionMessage>"
            "</sf:UnexpectedErrorFault></detail>"
        )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{_ENV_NS}" xmlns:sf="{_FAULT_NS}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f"<soapenv:Fault><faultcode>{escape(code)}</faultcode>"
        f"<faultstring>{escape(message)}</faultstring>{detail}</soapenv:Fault>"
        "</soapenv:Body></soapenv:Envelope>"
    )
    return web.Response(text=text, status=500, content_type="text/xml", charset="UTF-8")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class SoapApi:
    """`POST /services/Soap/u/{version}` handling `undelete`."""

    def __init__(self, store: RecordStore, tokens: TokenService) -> None:
        self.store = store
        self.tokens = tokens

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            root = ET.fromstring(raw)  # noqa: S314 - see import note
        except ET.ParseError as exc:
            return _fault("soapenv:Client", f"Unable to parse the request: {exc}")
        session_id = next(
            (el.text or "" for el in root.iter() if _local(el.tag) == "sessionId"), ""
        )
        if self.tokens.check(f"Bearer {session_id.strip()}") is None:
            return _fault(
                "sf:INVALID_SESSION_ID",
                "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: Illegal Session",
            )
        body = next((el for el in root if _local(el.tag) == "Body"), None)
        operation = next(iter(body), None) if body is not None else None
        if operation is None or _local(operation.tag) != "undelete":
            name = _local(operation.tag) if operation is not None else "(none)"
            return _fault(
                "sf:INVALID_OPERATION",
                f"INVALID_OPERATION: the emulator's SOAP endpoint implements "
                f"undelete() only, not {name}()",
            )
        ids = [(el.text or "").strip() for el in operation if _local(el.tag) == "ids"]
        origin = f"com/salesforce/api/soap/{request.match_info['version']}"
        # The CallOptions header's `client` names the integration in `changeOrigin`, as
        # the REST API's `Sforce-Call-Options: client=...` header does.
        client = next(
            (
                (child.text or "").strip()
                for header in root.iter()
                if _local(header.tag) == "CallOptions"
                for child in header
                if _local(child.tag) == "client"
            ),
            "",
        )
        if client:
            origin = f"{origin};client={client}"
        transaction = self.store.transaction(origin)
        results = []
        for record_id in ids:
            try:
                transaction.undelete(record_id)
            except RecordError as exc:
                # A failed result still names a well-formed id, in its 18-character form.
                shown = (
                    f"<id>{to18(record_id)}</id>"
                    if is_valid_id(record_id)
                    else '<id xsi:nil="true"/>'
                )
                results.append(
                    f"<result><errors><message>{escape(exc.message)}</message>"
                    f"<statusCode>{escape(exc.error_code)}</statusCode></errors>"
                    f"{shown}<success>false</success></result>"
                )
            else:
                results.append(
                    f"<result><id>{to18(record_id)}</id><success>true</success></result>"
                )
        transaction.commit()
        return _xml(f"<undeleteResponse>{''.join(results)}</undeleteResponse>")
