package accel

// product is one row of the accelerator product table.
type product struct {
	name       string
	generation string
	// topsInt8 is the vendor's published peak INT8 TOPS for the NPU alone;
	// 0 means no figure is published or it depends on the SKU.
	topsInt8 float64
}

// pciID keys the PCI product table.
type pciID struct{ vendor, device uint16 }

const (
	vendorIntel = 0x8086
	vendorAMD   = 0x1022
)

// pciProducts maps PCI ids of NPUs to products. Each row names its source.
var pciProducts = map[pciID]product{
	// Linux drivers/accel/ivpu/ivpu_drv.h PCI_DEVICE_ID_MTL = 0x7d1d, IP 37xx;
	// Intel Core Ultra (Series 1, Meteor Lake) product brief: NPU 3720, up to
	// 11 TOPS INT8 (11.5 on the top SKUs).
	{vendorIntel, 0x7d1d}: {"Intel NPU (Meteor Lake)", "NPU 3720", 11},
	// ivpu_drv.h PCI_DEVICE_ID_ARL = 0xad1d, same 37xx IP as Meteor Lake;
	// Intel Core Ultra 200H/U (Arrow Lake) specifications: NPU up to 13 TOPS.
	{vendorIntel, 0xad1d}: {"Intel NPU (Arrow Lake)", "NPU 3720", 13},
	// ivpu_drv.h PCI_DEVICE_ID_LNL = 0x643e, IP 40xx; Intel Core Ultra 200V
	// (Lunar Lake) launch material: NPU 4, up to 48 TOPS INT8.
	{vendorIntel, 0x643e}: {"Intel NPU (Lunar Lake)", "NPU 4", 48},
	// ivpu_drv.h PCI_DEVICE_ID_PTL_P = 0xb03e, IP 50xx; Intel Core Ultra
	// series 3 (Panther Lake) announcement: NPU 5, up to 50 TOPS.
	{vendorIntel, 0xb03e}: {"Intel NPU (Panther Lake)", "NPU 5", 50},
	// ivpu_drv.h PCI_DEVICE_ID_WCL = 0xfd3e, IP 50xx (Wildcat Lake); no TOPS
	// figure found.
	{vendorIntel, 0xfd3e}: {"Intel NPU (Wildcat Lake)", "NPU 5", 0},
	// ivpu_drv.h PCI_DEVICE_ID_NVL = 0xd71d, IP 60xx (Nova Lake); no TOPS
	// figure found.
	{vendorIntel, 0xd71d}: {"Intel NPU (Nova Lake)", "NPU 6", 0},
	// Linux drivers/accel/amdxdna/amdxdna_pci_drv.c: 0x1502 is NPU1 (AIE2,
	// "XDNA"). AMD Ryzen 7040 (Phoenix) specifications: 10 TOPS; Ryzen 8040
	// (Hawk Point) uses the same device id at 16 TOPS. The id cannot tell them
	// apart, so the table keeps the lower figure.
	{vendorAMD, 0x1502}: {"AMD XDNA NPU (Phoenix/Hawk Point)", "XDNA", 10},
	// amdxdna_pci_drv.c: 0x17f0 is NPU4/5/6 (AIE2P, "XDNA 2"), told apart by
	// PCI revision; AMD Ryzen AI 300 (Strix Point, Krackan Point) and Ryzen
	// AI Max (Strix Halo) specifications: 50 TOPS.
	{vendorAMD, 0x17f0}: {"AMD XDNA 2 NPU (Strix/Krackan)", "XDNA 2", 50},
}

// dtProduct is a device-tree compatible string that marks an NPU.
type dtProduct struct {
	compatible string
	product
	// root: match the board's root compatible instead of a device node,
	// for SoCs whose "NPU" is instructions in the CPU cores.
	root bool
}

// dtProducts lists NPUs found by device-tree compatible string, most specific
// first. Each row names its source.
var dtProducts = []dtProduct{
	// Mainline accel/rocket driver: Documentation/devicetree/bindings/npu/
	// rockchip,rk3588-rknn-core.yaml (one node per NPU core, three on RK3588;
	// later versions of the binding add "rockchip,rk3588-rknn-core-top").
	// RK3588 datasheet: NPU up to 6 TOPS (INT8), three cores.
	{compatible: "rockchip,rk3588-rknn-core-top", product: product{"Rockchip RK3588 NPU", "RKNN", 6}},
	{compatible: "rockchip,rk3588-rknn-core", product: product{"Rockchip RK3588 NPU", "RKNN", 6}},
	// Rockchip vendor (BSP) kernel rknpu driver, rknpu_drv.c of_match table.
	{compatible: "rockchip,rk3588-rknpu", product: product{"Rockchip RK3588 NPU", "RKNN", 6}},
	// Rockchip vendor rknpu driver, rknpu_drv.c; RK3568 datasheet: 0.8 TOPS.
	{compatible: "rockchip,rk3568-rknpu", product: product{"Rockchip RK3568 NPU", "RKNN", 0.8}},
	// Sophgo/CVITEK vendor TPU driver (sophgo/osdrv interdrv tpu,
	// cvi_tpu_match "cvitek,tpu"), used on CV1812/SG2000/SG2002 boards such as
	// Milk-V Duo 256M / Duo S. SG2002 product brief: 1.0 TOPS INT8 (CV180x
	// parts are lower), so the figure is the upper bound of the family.
	{compatible: "cvitek,tpu", product: product{"Sophgo/CVITEK TPU", "CV18xx/SG200x", 1}},
	// Kendryte K230 KPU: node kpu@80400000 compatible "canaan,k230-kpu" in the
	// K230 device trees used by the CanMV-K230 ports (QEMU K230 board,
	// StarryOS k230-canmv.dts). Canaan publishes frames per second for the
	// KPU, not TOPS.
	{compatible: "canaan,k230-kpu", product: product{"Kendryte K230 KPU", "KPU (3rd gen)", 0}},
	// SpacemiT K1 has no separate NPU device: its "2.0 TOPS AI" are custom
	// matrix instructions in the X60 cores of cluster 0 (SpacemiT K1 product
	// brief). Mainline root compatible "spacemit,k1" (k1.dtsi), vendor Bianbu
	// kernels "spacemit,k1-x" (OpenSBI platform match table lists both).
	{compatible: "spacemit,k1", root: true, product: product{"SpacemiT K1 AI cores (X60)", "CPU-fused AI", 2}},
	{compatible: "spacemit,k1-x", root: true, product: product{"SpacemiT K1 AI cores (X60)", "CPU-fused AI", 2}},
}

// lookupDT returns the first table row whose compatible appears in compats.
func lookupDT(compats []string, root bool) (dtProduct, bool) {
	for _, p := range dtProducts {
		if p.root != root {
			continue
		}
		for _, c := range compats {
			if c == p.compatible {
				return p, true
			}
		}
	}
	return dtProduct{}, false
}
