"""HubClient's key lifecycle operations: rotating the member's own signing key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xhub.connectors.sdk._internal import key_files
from xhub.connectors.sdk.services.registry import RegistryCalls
from xhub.protocol.errors import AuthenticationError, BadResponseError, RefusedError
from xhub.protocol.key_rotation import possession_statement
from xhub.protocol.signing import (
    ECDSA_P256,
    KeySigner,
    PrivateKey,
    generate_private_key,
    public_key_der,
)
from xhub.v1 import envelope_pb2, registry_pb2


class KeyCalls(RegistryCalls):
    """HubClient's key lifecycle operations."""

    bundle_dir: Path | None

    def rotate_signing_key(
        self, *, algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256
    ) -> registry_pb2.SigningKeyRotationResult:
        """Replace this member's message-signing key (签名密钥轮换).

        The new key is generated here and never leaves this machine. The request is signed
        with the current key and carries the new key's proof of possession; once the hub
        confirms, this client signs with the new key and — for a client made by
        ``from_bundle`` — the bundle directory is switched over: the new key becomes
        ``signing.key``, ``member.json`` names it (replaced atomically), and a former
        ``signing.key`` is kept as ``signing.key.<key id>.old``.

        The new key is staged as ``signing.key.pending`` before the request is sent, so
        a call that got no answer (TransportError) can simply be made again: it finds the
        staged key, asks the hub whether it is registered, and either finishes the switch
        or sends the rotation again with the same key.

        Returns the hub's signed answer: the member with every key and its window.

        Raises: AuthenticationError (the request is not signed with the member's current
        key, or the proof of possession fails), AlreadyExistsError (the key is registered),
        MalformedError, TransportError (no answer: call again), BadResponseError (the
        answer does not register the new key as current).
        """
        directory = self.bundle_dir
        staged = key_files.pending_key(directory) if directory else None
        if staged is not None:
            done = self._registered_already(staged)
            if done is not None:
                self._switch_to(staged)
                return done
        new_key = staged or generate_private_key(algorithm)
        if directory is not None and staged is None:
            key_files.stage(directory, new_key)
        try:
            answer = self._send_rotation(new_key)
        except RefusedError:
            if directory is not None:
                key_files.discard(directory)
            raise
        self._switch_to(new_key)
        return answer

    def _send_rotation(self, new_key: PrivateKey) -> registry_pb2.SigningKeyRotationResult:
        signer = KeySigner(new_key)
        payload = registry_pb2.SigningKeyRotation(
            new_key=registry_pb2.PublicKey(
                key_id=signer.key_id,
                algorithm=signer.algorithm,
                public_key_der=public_key_der(new_key.public_key()),
            )
        )

        def prove(rotation: registry_pb2.SigningKeyRotation) -> None:
            statement = possession_statement(
                self.member_id, signer.key_id, rotation.header.message_id
            )
            rotation.proof_of_possession = signer.sign(statement)

        answer = self.transport.call(
            self.transport.registry.RotateSigningKey,
            registry_pb2.RotateSigningKeyRequest,
            payload,
            registry_pb2.SigningKeyRotationResult,
            idempotent=False,
            complete=prove,
        )
        _require_current(answer.member, self.member_id, signer.key_id)
        return answer

    def _registered_already(
        self, staged: PrivateKey
    ) -> registry_pb2.SigningKeyRotationResult | None:
        """The hub's view of us if it registered ``staged`` as current already, else None.
        Asked with the current key; if the hub retired that one, with the staged key."""
        staged_id = KeySigner(staged).key_id
        try:
            found = self.lookup_member(self.member_id)
        except AuthenticationError as exc:
            if exc.reason != envelope_pb2.ERROR_REASON_UNKNOWN_KEY:
                raise
            previous = self.bundle
            self._use(dataclasses.replace(previous, signing_key=staged))
            try:
                found = self.lookup_member(self.member_id)
            finally:
                self._use(previous)
        if not any(
            k.key_id == staged_id and not k.HasField("valid_until")
            for k in found.member.signing_keys
        ):
            return None
        return registry_pb2.SigningKeyRotationResult(header=found.header, member=found.member)

    def _switch_to(self, new_key: PrivateKey) -> None:
        old_key_id = self.bundle.signer.key_id
        self._use(dataclasses.replace(self.bundle, signing_key=new_key))
        if self.bundle_dir is not None:
            key_files.commit(self.bundle_dir, old_key_id, self.bundle.signer.key_id)

    def _use(self, bundle: object) -> None:
        assert isinstance(bundle, type(self.bundle))
        self.bundle = bundle
        self.transport.bundle = bundle


def _require_current(member: registry_pb2.Member, member_id: str, key_id: str) -> None:
    if member.member_id != member_id:
        raise BadResponseError(f"rotation answer describes {member.member_id!r}, not {member_id!r}")
    if not any(k.key_id == key_id and not k.HasField("valid_until") for k in member.signing_keys):
        raise BadResponseError(
            f"rotation answer does not list the new key {key_id[:16]}… as current for {member_id}"
        )
