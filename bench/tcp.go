package bench

import (
	"context"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
)

// TCP measures the epoll ingress end to end over loopback: echo
// clients send, the server reads into its ring, a consumer takes batches.
// One op is one sample; the clock stops when every client has all its acks.
//
// In the same run, the same clients send the same number of samples to the
// raw sink (the ceiling: read and discard) and to the goroutine-per-
// connection net.Conn baseline (the same ring behind bufio), reported as
// sink_samples/s and netconn_samples/s, with the epoll ingress's ratios to
// them as x_sink and x_netconn.
//
// group is the samples per client call: 1 is Client.Send, one writev per
// sample, as an actor with one environment sends; 16 is Client.SendBatch
// of 16, as an actor stepping 16 environments sends, which takes most of
// the clients' per-sample system-call cost out of the measurement.
//
// Clients and server share this machine's cores: with few cores, 16 and
// 256 clients measure contention for them, not scaling.
func TCP(b *testing.B, w Workload, clients, group int) {
	sample := w.MustSample(1)
	per := (b.N + clients - 1) / clients
	total := float64(per * clients)
	b.SetBytes(int64(w.PayloadBytes))
	b.ReportAllocs()

	// Each server starts once the kernel has reclaimed the socket memory
	// of the one before: with 256 clients of 1 MB samples, the first
	// seconds after a run are spent under TCP memory pressure.
	b.StopTimer()
	SettleTCP()
	rto0 := TCPTimeouts()
	epoll := timeEpoll(b, w, sample, clients, per, group)
	b.StopTimer()
	rto1 := TCPTimeouts()
	SettleTCP()
	sink := timeSink(b, sample, clients, per, group)
	SettleTCP()
	netconn := timeNetConn(b, w, sample, clients, per, group)
	rto2 := TCPTimeouts()
	if rto0 >= 0 {
		// Retransmission timeouts on loopback mean dropped segments (socket
		// memory pressure): a run with them measures the kernel's recovery.
		b.ReportMetric(float64(rto1-rto0), "rto_epoll")
		b.ReportMetric(float64(rto2-rto1), "rto_others")
	}

	rate := total / epoll.Seconds()
	b.ReportMetric(rate, "samples/s")
	b.ReportMetric(total/sink.Seconds(), "sink_samples/s")
	b.ReportMetric(total/netconn.Seconds(), "netconn_samples/s")
	b.ReportMetric(sink.Seconds()/epoll.Seconds(), "x_sink")
	b.ReportMetric(netconn.Seconds()/epoll.Seconds(), "x_netconn")
}

// timeEpoll runs the echo server with the benchmark's timer on.
func timeEpoll(b *testing.B, w Workload, sample any, clients, per, group int) time.Duration {
	b.StopTimer()
	d, _ := timeIngest(b, w, sample, clients, per, group, true, nil)
	return d
}

func timeSink(b *testing.B, sample any, clients, per, group int) time.Duration {
	sink, err := NewSink(sample)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	return timeLoad(b, sink.Addr(), sample, clients, per, group)
}

func timeNetConn(b *testing.B, w Workload, sample any, clients, per, group int) time.Duration {
	nc, err := NewNetConnServer(sample, w.BatchSize, echo.DefaultNumBuffers)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	return timeLoad(b, nc.Addr(), sample, clients, per, group)
}

// timeLoad times clients sending per samples each to addr, a server that
// speaks wire version 1 alone.
func timeLoad(b *testing.B, addr string, sample any, clients, per, group int) time.Duration {
	cl := dial(b, addr, sample, clients, echo.WithWireVersion(1))
	defer CloseClients(cl)
	t0 := time.Now()
	send(b, cl, sample, per, group)
	return time.Since(t0)
}

func dial(b *testing.B, addr string, sample any, clients int, opts ...echo.ClientOption) []*echo.Client {
	cl, err := DialClients(context.Background(), addr, sample, clients, opts...)
	if err != nil {
		b.Fatal(err)
	}
	return cl
}

func send(b *testing.B, cl []*echo.Client, sample any, per, group int) {
	if err := SendAll(context.Background(), cl, sample, per, group); err != nil {
		b.Fatal(err)
	}
}
