package wire

import (
	"bytes"
	"errors"
	"testing"
)

var (
	testSecret = []byte("0123456789abcdef")
	serverN    = Nonce{1, 2, 3}
	clientN    = Nonce{4, 5, 6}
)

func TestAuthExchange(t *testing.T) {
	ch := AppendChallenge(nil, &serverN)
	if len(ch) != ChallengeLen || string(ch[:4]) != AuthMagic {
		t.Fatalf("challenge % x", ch)
	}
	got, err := DecodeChallenge(ch)
	if err != nil || got != serverN {
		t.Fatalf("DecodeChallenge: %v, %v", got, err)
	}
	resp := AppendResponse(nil, testSecret, &got, &clientN)
	if len(resp) != ResponseLen {
		t.Fatalf("response of %d bytes", len(resp))
	}
	if bytes.Contains(resp, testSecret) || bytes.Contains(ch, testSecret) {
		t.Fatal("the secret is on the wire")
	}
	cn, err := VerifyResponse(resp, testSecret, &serverN)
	if err != nil || cn != clientN {
		t.Fatalf("VerifyResponse: %v, %v", cn, err)
	}
	proof := ServerProof(testSecret, &serverN, &cn)
	if err := VerifyServerProof(proof[:], testSecret, &serverN, &clientN); err != nil {
		t.Fatal(err)
	}
	// The two directions' proofs differ: a server cannot echo the client's.
	if bytes.Equal(proof[:], resp[NonceLen:]) {
		t.Fatal("server proof equals client proof")
	}
}

func TestAuthRejects(t *testing.T) {
	resp := AppendResponse(nil, testSecret, &serverN, &clientN)
	other := []byte("fedcba9876543210")
	if _, err := VerifyResponse(resp, other, &serverN); !errors.Is(err, ErrAuth) {
		t.Errorf("other secret: %v", err)
	}
	if _, err := VerifyResponse(resp, testSecret, &Nonce{9}); !errors.Is(err, ErrAuth) {
		t.Errorf("other challenge (a replay): %v", err)
	}
	for i := range resp {
		bad := bytes.Clone(resp)
		bad[i] ^= 1
		if _, err := VerifyResponse(bad, testSecret, &serverN); !errors.Is(err, ErrAuth) {
			t.Fatalf("bit flipped at byte %d: %v", i, err)
		}
	}
	if _, err := VerifyResponse(resp[:ResponseLen-1], testSecret, &serverN); err != ErrShort {
		t.Errorf("short response: %v", err)
	}
	proof := ServerProof(other, &serverN, &clientN)
	if err := VerifyServerProof(proof[:], testSecret, &serverN, &clientN); !errors.Is(err, ErrAuth) {
		t.Errorf("server with another secret: %v", err)
	}
	if err := VerifyServerProof(proof[:5], testSecret, &serverN, &clientN); err != ErrShort {
		t.Errorf("short proof: %v", err)
	}
}

func TestDecodeChallengeErrors(t *testing.T) {
	ch := AppendChallenge(nil, &serverN)
	if _, err := DecodeChallenge(ch[:ChallengeLen-1]); err != ErrShort {
		t.Errorf("short: %v", err)
	}
	if _, err := DecodeChallenge(append([]byte("ECHO"), ch[4:]...)); !errors.Is(err, ErrBadMagic) {
		t.Errorf("magic: %v", err)
	}
	bad := bytes.Clone(ch)
	bad[4] = 2
	var ve *VersionError
	if _, err := DecodeChallenge(bad); !errors.As(err, &ve) || ve.Version != 2 {
		t.Errorf("version: %v", err)
	}
	if err := CheckSecret(make([]byte, MinSecretLen-1)); err != ErrSecret {
		t.Errorf("CheckSecret: %v", err)
	}
}
