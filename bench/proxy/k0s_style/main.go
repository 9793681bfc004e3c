// Command k0s-style is the proxy benchmark's stand-in for k0s's userspace load balancer:
// a TCP proxy with the same design (written for this benchmark, no code taken from k0s).
//
//	k0s-style -listen 127.0.0.1:7443 -backends 127.0.0.1:6443,127.0.0.1:6444
//
// One accept loop; every accepted connection gets the next backend in round robin and a
// goroutine pair, each running io.Copy in one direction. When one direction ends (EOF),
// its write side is shut down (CloseWrite) so the peer sees the half-close; the connection
// is closed once both directions are done, or at once when a copy fails. On Linux, io.Copy
// between two TCP connections splices (a kernel pipe per direction), as it would in k0s.
// Runs until killed (SIGTERM ends it, Go's default).
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7443", "address to accept connections on")
	list := flag.String("backends", "", "backends as HOST:PORT,HOST:PORT,...")
	flag.Parse()
	var backends []string
	for _, b := range strings.Split(*list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			backends = append(backends, b)
		}
	}
	if len(backends) == 0 {
		log.Fatal("no backends (-backends HOST:PORT,...)")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	var next uint64
	for {
		client, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept: %v", err) // e.g. out of file descriptors: retry shortly
			time.Sleep(10 * time.Millisecond)
			continue
		}
		n := atomic.AddUint64(&next, 1) - 1
		go serve(client, backends[n%uint64(len(backends))])
	}
}

// serve proxies one client connection to backend until both directions are done.
func serve(client net.Conn, backend string) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		log.Printf("dial %s: %v", backend, err)
		return
	}
	defer server.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(server, client)
	}()
	pipe(client, server)
	wg.Wait()
}

// pipe copies src to dst; at EOF it half-closes dst, on an error it closes both.
func pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if tcp, ok := dst.(*net.TCPConn); ok {
		tcp.CloseWrite()
	} else {
		dst.Close()
	}
}
