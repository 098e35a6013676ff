// Binary dhcpd answers DHCP for netbooting nodes (proxy or full mode).
package main

import (
	"context"

	"github.com/ociboot/ociboot/appliance/service"
)

func main() {
	service.Main("dhcpd", ":9067", func(ctx context.Context, env *service.Env) error {
		env.SetStatus(func() any {
			return map[string]any{"service": "dhcpd", "mode": env.Config.Mode, "interface": env.Config.Interface}
		})
		<-ctx.Done()
		return ctx.Err()
	})
}
