package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Shared-secret authentication, an extension of this package's own, off
// unless both sides are given the secret. It runs before the version-1
// handshake and proves to each side that the other holds the secret,
// without the secret crossing the wire:
//
//	server → client: "EAUT" | auth version u8 = 1 | server nonce (32 bytes)
//	client → server: client nonce (32 bytes) |
//	                 HMAC-SHA256(secret, "echo auth v1 client" | server nonce | client nonce)
//	server → client: HMAC-SHA256(secret, "echo auth v1 server" | server nonce | client nonce)
//	then the version-1 handshake and the samples, as without authentication
//
// Both nonces are fresh random bytes per connection, so a response recorded
// from one connection proves nothing on another, and a server proof cannot
// be replayed either. A client that does not speak the extension reads
// "EAUT" where it expects "ECHO" and stops with a bad-magic error.
//
// It authenticates the peers, not the stream: it neither encrypts nor
// signs the samples, so an attacker on the path can still read them or
// take over a connection after the exchange. Where that matters, carry the
// connection over an encrypted tunnel (WireGuard, SSH, TLS).
const (
	// AuthMagic opens the server's challenge.
	AuthMagic = "EAUT"
	// AuthVersion1 is the only version of the exchange.
	AuthVersion1 uint8 = 1
	// NonceLen is the size of each side's nonce.
	NonceLen = 32
	// ProofLen is the size of each side's proof, an HMAC-SHA256.
	ProofLen = sha256.Size
	// ChallengeLen is the size of the server's challenge.
	ChallengeLen = len(AuthMagic) + 1 + NonceLen
	// ResponseLen is the size of the client's response.
	ResponseLen = NonceLen + ProofLen
	// MinSecretLen is the shortest secret accepted: 128 bits.
	MinSecretLen = 16
)

// Nonce is one side's random challenge.
type Nonce [NonceLen]byte

// Proof is one side's answer to the challenges.
type Proof [ProofLen]byte

// ErrAuth: the peer's proof does not match the secret, or the exchange is
// malformed.
var ErrAuth = errors.New("wire: authentication failed")

// ErrSecret: the secret is shorter than MinSecretLen.
var ErrSecret = fmt.Errorf("wire: shared secret shorter than %d bytes", MinSecretLen)

// CheckSecret returns ErrSecret if secret is too short to be one.
func CheckSecret(secret []byte) error {
	if len(secret) < MinSecretLen {
		return ErrSecret
	}
	return nil
}

// AppendChallenge appends the server's challenge carrying nonce.
func AppendChallenge(dst []byte, nonce *Nonce) []byte {
	dst = append(dst, AuthMagic...)
	dst = append(dst, AuthVersion1)
	return append(dst, nonce[:]...)
}

// DecodeChallenge decodes a server's challenge from the first ChallengeLen
// bytes of b. It returns ErrShort if b is shorter, an error wrapping
// ErrBadMagic if b does not start with AuthMagic, and a *VersionError for
// another version of the exchange.
func DecodeChallenge(b []byte) (Nonce, error) {
	var n Nonce
	if len(b) < ChallengeLen {
		return n, ErrShort
	}
	if string(b[:len(AuthMagic)]) != AuthMagic {
		return n, fmt.Errorf("%w: %q, want %q", ErrBadMagic, b[:len(AuthMagic)], AuthMagic)
	}
	if v := b[len(AuthMagic)]; v != AuthVersion1 {
		return n, &VersionError{Version: v}
	}
	copy(n[:], b[len(AuthMagic)+1:ChallengeLen])
	return n, nil
}

// proof is HMAC-SHA256(secret, label | server | client).
func proof(secret []byte, label string, server, client *Nonce) Proof {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(server[:])
	m.Write(client[:])
	var p Proof
	m.Sum(p[:0])
	return p
}

const (
	clientLabel = "echo auth v1 client"
	serverLabel = "echo auth v1 server"
)

// AppendResponse appends the client's response to the challenge server:
// its own nonce and its proof.
func AppendResponse(dst []byte, secret []byte, server, client *Nonce) []byte {
	p := proof(secret, clientLabel, server, client)
	dst = append(dst, client[:]...)
	return append(dst, p[:]...)
}

// VerifyResponse checks a client's response (the first ResponseLen bytes
// of b) to the challenge server. It returns the client's nonce, or an error
// wrapping ErrShort or ErrAuth. The comparison takes the same time however
// much of the proof matches.
func VerifyResponse(b []byte, secret []byte, server *Nonce) (Nonce, error) {
	var client Nonce
	if len(b) < ResponseLen {
		return client, ErrShort
	}
	copy(client[:], b[:NonceLen])
	want := proof(secret, clientLabel, server, &client)
	if !hmac.Equal(want[:], b[NonceLen:ResponseLen]) {
		return client, fmt.Errorf("%w: client proof does not match", ErrAuth)
	}
	return client, nil
}

// ServerProof is the server's proof, sent once the client's checks out.
func ServerProof(secret []byte, server, client *Nonce) Proof {
	return proof(secret, serverLabel, server, client)
}

// VerifyServerProof checks the server's proof (the first ProofLen bytes of
// b). It returns an error wrapping ErrShort or ErrAuth.
func VerifyServerProof(b []byte, secret []byte, server, client *Nonce) error {
	if len(b) < ProofLen {
		return ErrShort
	}
	want := ServerProof(secret, server, client)
	if !hmac.Equal(want[:], b[:ProofLen]) {
		return fmt.Errorf("%w: server proof does not match", ErrAuth)
	}
	return nil
}
