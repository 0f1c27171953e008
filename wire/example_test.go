package wire_test

import (
	"errors"
	"fmt"

	"github.com/seed-a9ef92a1/echo/wire"
)

func Example() {
	// The server describes {done: uint8[], obs: float32[8], reward: float32[]}.
	server := wire.Handshake{Version: wire.Version1, Arrays: []wire.ArraySpec{
		{DTypeSize: 1},
		{DTypeSize: 4, Shape: []int{8}},
		{DTypeSize: 4},
	}}
	b, err := wire.AppendHandshake(nil, server)
	if err != nil {
		panic(err)
	}
	fmt.Printf("% x\n", b[:9])

	// The client decodes it, possibly from several reads.
	h, n, err := wire.DecodeHandshake(b[:20], wire.Limits{})
	fmt.Println(n, errors.Is(err, wire.ErrShort))
	h, n, err = wire.DecodeHandshake(b, wire.Limits{})
	if err != nil {
		panic(err)
	}
	payload, err := h.PayloadSize(wire.Limits{})
	fmt.Println(n, payload, err)

	// A client with another example tree refuses.
	client := wire.Handshake{Version: wire.Version1, Arrays: []wire.ArraySpec{
		{DTypeSize: 1},
		{DTypeSize: 4, Shape: []int{6}},
		{DTypeSize: 4},
	}}
	fmt.Println(client.Compare(h))
	// Output:
	// 45 43 48 4f 01 03 00 00 00
	// 0 true
	// 37 37 <nil>
	// wire: spec mismatch: array 1: shape [6], peer has [8]
}

func ExampleAssembler() {
	a, err := wire.NewAssembler(3)
	if err != nil {
		panic(err)
	}
	var got []string
	var acks []byte
	for _, chunk := range []string{"ab", "cdefg", "hi"} {
		n := a.Feed([]byte(chunk), func(sample []byte) { got = append(got, string(sample)) })
		acks = wire.AppendAcks(acks, n)
	}
	fmt.Println(got)
	fmt.Printf("% x, pending %d\n", acks, a.Pending())
	// Output:
	// [abc def ghi]
	// 01 01 01, pending 0
}
