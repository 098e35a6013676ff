package nodes

import (
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/store"
)

func TestLastBoot(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	save := func(svc, stage string, s int) {
		t.Helper()
		if err := SaveStage(st, "abcd0001", svc, Stage{Stage: stage, Time: at(s)}); err != nil {
			t.Fatal(err)
		}
	}
	// First boot: DHCP, firmware files, kernel, the kernel's DHCP, mount.
	save("dhcpd", StageDHCP, 0)
	save("dhcpd", StageDHCP, 1)
	save("tftpd", StageFirmware, 3)
	save("tftpd", StageFirmware, 5)
	save("tftpd", StageKernel, 8)
	save("dhcpd", StageDHCP, 30)
	save("nfsd", StageRoot, 40)
	tl := LastBoot(st, "abcd0001")
	want := []Step{{StageDHCP, at(0), 0}, {StageFirmware, at(3), 3 * time.Second}, {StageKernel, at(8), 5 * time.Second}, {StageRoot, at(40), 32 * time.Second}}
	if got := tl.Steps; len(got) != len(want) {
		t.Fatalf("first boot: got %+v, want %+v", got, want)
	}
	for i := range want {
		if got := tl.Steps[i]; got != want[i] {
			t.Errorf("first boot step %d: got %+v, want %+v", i, got, want[i])
		}
	}
	if got, want := tl.Activity, at(40); !got.Equal(want) {
		t.Errorf("activity: got %v, want %v", got, want)
	}
	// A running system renews its lease (full mode): the same boot.
	save("dhcpd", StageDHCP, 300)
	if got, want := LastBoot(st, "abcd0001").Reached(), StageRoot; got != want {
		t.Errorf("after a renewal: got %q, want %q", got, want)
	}
	// A reboot that stops after the firmware: the page must not show
	// the old root-mounted.
	save("dhcpd", StageDHCP, 600)
	save("tftpd", StageFirmware, 602)
	tl = LastBoot(st, "abcd0001")
	if got, want := tl.Reached(), StageFirmware; got != want {
		t.Errorf("second boot reached: got %q, want %q (%+v)", got, want, tl.Steps)
	}
	if got, want := len(tl.Steps), 2; got != want {
		t.Errorf("second boot steps: got %d, want %d (%+v)", got, want, tl.Steps)
	}
	if got, want := tl.Steps[0].Time, at(600); !got.Equal(want) {
		t.Errorf("second boot starts: got %v, want %v", got, want)
	}
	if LastBoot(st, "abcd0009").Steps != nil {
		t.Error("a node never seen has steps")
	}
}

func TestHistoryBounded(t *testing.T) {
	var h []Span
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		h = extend(h, StageDHCP, t0.Add(time.Duration(i)*time.Minute))
	}
	if got, want := len(h), HistoryLen; got != want {
		t.Errorf("history length: got %d, want %d", got, want)
	}
}

func TestTimelinePXEAndRetries(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	span := func(stage string, s int) Span { return Span{Stage: stage, First: at(s), Last: at(s)} }
	for _, c := range []struct {
		name  string
		spans []Span
		want  []string
	}{
		{"PXE machine: DHCP, kernel over TFTP, the initramfs' DHCP, mount",
			[]Span{span(StageDHCP, 0), span(StageKernel, 2), span(StageDHCP, 20), span(StageDHCP, 40), span(StageRoot, 45)},
			[]string{StageDHCP, StageKernel, StageRoot}},
		{"no image: DHCP retries only",
			[]Span{span(StageDHCP, 0), span(StageDHCP, 60), span(StageDHCP, 120)},
			[]string{StageDHCP}},
		{"reboot of a PXE machine",
			[]Span{span(StageDHCP, 0), span(StageKernel, 2), span(StageRoot, 30), span(StageDHCP, 600), span(StageKernel, 602)},
			[]string{StageDHCP, StageKernel}},
	} {
		tl := timeline(c.spans)
		var got []string
		for _, s := range tl.Steps {
			got = append(got, s.Stage)
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
