// spdyclient is the independent peer of rcd's streaming tests: a Kubernetes-style SPDY/3.1
// exec/attach/port-forward client built on moby/spdystream (the SPDY stack under kubelet,
// kubectl and crictl), driven by a small script of actions.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/moby/spdystream"
)

var (
	rawURL    = flag.String("url", "", "streaming URL")
	proto     = flag.String("proto", "v4.channel.k8s.io", "X-Stream-Protocol-Version (comma list)")
	mode      = flag.String("mode", "exec", "exec | portforward")
	stdin     = flag.Bool("stdin", false, "open a stdin stream")
	stdout    = flag.Bool("stdout", true, "open a stdout stream")
	stderr    = flag.Bool("stderr", false, "open a stderr stream")
	tty       = flag.Bool("tty", false, "open a resize stream")
	status    = flag.String("status", "", "file for what arrives on the error stream")
	script    = flag.String("do", "", "actions separated by ';': in:TEXT, eof, resize:WxH, sleep:MS, await:TEXT, hangup")
	port      = flag.Int("port", 0, "port to forward")
	conns     = flag.Int("conns", 1, "forwarded connections, opened at once")
	payload   = flag.String("payload", "hello", "what each forwarded connection sends")
	bulk      = flag.Int("bulk", 0, "send this many bytes (in 32 KiB writes) instead of the payload")
	noReqID   = flag.Bool("no-requestid", false, "open port-forward streams without requestid (old clients)")
	transport = flag.String("transport", "spdy", "spdy | websocket (SPDY tunnelled in binary messages, as client-go's websocket port-forward dialer does)")
)

// wsConn carries a byte stream in binary WebSocket messages.
type wsConn struct {
	*websocket.Conn
	r io.Reader
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			t, r, err := c.Conn.NextReader()
			if err != nil {
				return 0, err
			}
			if t != websocket.BinaryMessage {
				continue
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.Conn.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	c.Conn.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func tunnel() (net.Conn, *spdystream.Connection) {
	u := strings.Replace(*rawURL, "http://", "ws://", 1)
	d := websocket.Dialer{Subprotocols: []string{"SPDY/3.1+portforward.k8s.io"}}
	ws, resp, err := d.Dial(u, nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			fmt.Printf("HTTP %d %s", resp.StatusCode, body)
			os.Exit(4)
		}
		die("websocket dial: %v", err)
	}
	fmt.Fprintf(os.Stderr, "negotiated %s\n", ws.Subprotocol())
	conn := &wsConn{Conn: ws}
	c, err := spdystream.NewConnection(conn, false)
	if err != nil {
		die("spdy: %v", err)
	}
	go c.Serve(spdystream.NoOpStreamHandler)
	return conn, c
}

// bufConn reads through the buffered reader that parsed the HTTP response.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyclient: "+format+"\n", args...)
	os.Exit(2)
}

func upgrade() (net.Conn, *spdystream.Connection) {
	u, err := url.Parse(*rawURL)
	if err != nil {
		die("bad url: %v", err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		die("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", u.String(), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range strings.Split(*proto, ",") {
		if p != "" {
			req.Header.Add("X-Stream-Protocol-Version", p)
		}
	}
	if err := req.Write(conn); err != nil {
		die("write request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		die("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("HTTP %d %s", resp.StatusCode, body)
		os.Exit(4)
	}
	fmt.Fprintf(os.Stderr, "negotiated %s\n", resp.Header.Get("X-Stream-Protocol-Version"))
	c, err := spdystream.NewConnection(&bufConn{conn, br}, false)
	if err != nil {
		die("spdy: %v", err)
	}
	go c.Serve(spdystream.NoOpStreamHandler)
	return conn, c
}

func open(c *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := c.CreateStream(h, nil, false)
	if err != nil {
		die("create stream %v: %v", h, err)
	}
	if err := s.WaitTimeout(10 * time.Second); err != nil {
		die("stream %v not accepted: %v", h, err)
	}
	return s
}

func unescape(s string) string {
	return strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\x04`, "\x04").Replace(s)
}

type watched struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cond *sync.Cond
	done bool
}

func (w *watched) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.cond.Broadcast()
	w.mu.Unlock()
	return os.Stdout.Write(p)
}

func (w *watched) await(text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for !strings.Contains(w.buf.String(), text) && !w.done {
		w.cond.Wait()
	}
}

func execMode() {
	conn, c := upgrade()
	h := func(t string) http.Header { return http.Header{"streamtype": {t}} }
	errStream := open(c, h("error"))
	var in, out, errOut, resize *spdystream.Stream
	if *stdin {
		in = open(c, h("stdin"))
	}
	if *stdout {
		out = open(c, h("stdout"))
	}
	if *stderr {
		errOut = open(c, h("stderr"))
	}
	if *tty {
		resize = open(c, h("resize"))
	}
	w := &watched{}
	w.cond = sync.NewCond(&w.mu)
	var wg sync.WaitGroup
	if out != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(w, out)
			w.mu.Lock()
			w.done = true
			w.cond.Broadcast()
			w.mu.Unlock()
		}()
	}
	if errOut != nil {
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(os.Stderr, errOut) }()
	}
	go func() {
		for _, a := range strings.Split(*script, ";") {
			if a == "" {
				continue
			}
			verb, arg, _ := strings.Cut(a, ":")
			switch verb {
			case "in":
				if _, err := in.Write([]byte(unescape(arg))); err != nil {
					die("stdin write: %v", err)
				}
			case "big":
				n, _ := strconv.Atoi(arg)
				chunk := bytes.Repeat([]byte("x"), 4096)
				for sent := 0; sent < n; sent += len(chunk) {
					if _, err := in.Write(chunk); err != nil {
						die("stdin write: %v", err)
					}
				}
			case "eof":
				in.Close()
			case "resize":
				wh := strings.Split(arg, "x")
				wd, _ := strconv.Atoi(wh[0])
				ht, _ := strconv.Atoi(wh[1])
				b, _ := json.Marshal(map[string]int{"Width": wd, "Height": ht})
				resize.Write(b)
			case "sleep":
				ms, _ := strconv.Atoi(arg)
				time.Sleep(time.Duration(ms) * time.Millisecond)
			case "await":
				w.await(unescape(arg))
			case "ping":
				if _, err := c.Ping(); err != nil {
					die("ping: %v", err)
				}
				fmt.Fprintf(os.Stderr, "ping answered\n")
			case "hangup":
				conn.Close()
				os.Exit(3)
			default:
				die("unknown action %q", a)
			}
		}
	}()
	msg, err := io.ReadAll(errStream)
	if err != nil {
		die("error stream: %v", err)
	}
	wg.Wait()
	if *status != "" {
		os.WriteFile(*status, msg, 0o644)
	}
	c.Close()
	conn.Close()
}

func portForwardMode() {
	var (
		nc net.Conn
		sc *spdystream.Connection
	)
	if *transport == "websocket" {
		nc, sc = tunnel()
	} else {
		nc, sc = upgrade()
	}
	forward(nc, sc)
}

func forward(conn net.Conn, c *spdystream.Connection) {
	var wg sync.WaitGroup
	results := make([]string, *conns)
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := http.Header{"streamtype": {"error"}, "port": {strconv.Itoa(*port)}}
			if !*noReqID {
				h.Set("requestid", strconv.Itoa(i))
			}
			errStream := open(c, h)
			errStream.Close()
			h2 := http.Header{"port": {strconv.Itoa(*port)}, "streamtype": {"data"}}
			if !*noReqID {
				h2.Set("requestid", strconv.Itoa(i))
			}
			data := open(c, h2)
			errc := make(chan string, 1)
			go func() { b, _ := io.ReadAll(errStream); errc <- string(b) }()
			gotc := make(chan []byte, 1)
			// read while writing, as client-go does: the echo comes back before the send ends
			go func() { b, _ := io.ReadAll(data); gotc <- b }()
			if *bulk > 0 {
				chunk := bytes.Repeat([]byte("y"), 32*1024)
				for sent := 0; sent < *bulk; sent += len(chunk) {
					data.Write(chunk)
				}
			} else {
				data.Write([]byte(fmt.Sprintf("%s %d\n", unescape(*payload), i)))
			}
			data.Close()
			got := <-gotc
			if *bulk > 0 {
				results[i] = fmt.Sprintf("%d:%d bytes:%q", i, len(got), <-errc)
			} else {
				results[i] = fmt.Sprintf("%d:%q:%q", i, got, <-errc)
			}
		}(i)
	}
	wg.Wait()
	for _, r := range results {
		fmt.Println(r)
	}
	c.Close()
	conn.Close()
}

func main() {
	flag.Parse()
	switch *mode {
	case "exec":
		execMode()
	case "portforward":
		portForwardMode()
	default:
		die("unknown mode %q", *mode)
	}
}
