"""Built-in templates, clone and provision on the simulator."""

from __future__ import annotations

from tests.ops.test_vm_power import Api, api  # noqa: F401 - the fixture


async def test_builtin_templates_are_installed(api: Api) -> None:  # noqa: F811
    names = {
        rec["name_label"]
        for rec in (await api("VM.get_all_records")).values()
        if rec["is_a_template"] and rec["other_config"].get("default_template") == "true"
    }
    assert {"Other install media", "Generic Linux UEFI", "pyxapi test guest"} <= names


async def test_clone_provision_start_of_the_test_guest(api: Api) -> None:  # noqa: F811
    [template] = [
        r for r in await api("VM.get_by_name_label", "pyxapi test guest") if await api("VM.get_is_a_template", r)
    ]
    vm = await api("VM.clone", template, "mine")
    rec = await api("VM.get_record", vm)
    assert rec["is_a_template"] is True and rec["uuid"] != (await api("VM.get_uuid", template))
    assert "default_template" not in rec["other_config"]
    assert rec["PV_kernel"].endswith("vmlinuz")
    await api("VM.provision", vm)
    assert await api("VM.get_is_a_template", vm) is False
    await api("VM.start", vm, False, False)
    assert await api("VM.get_power_state", vm) == "Running"
    assert (await api.error("VM.clone", vm, "x"))[0] == "VM_BAD_POWER_STATE"
    await api("VM.hard_shutdown", vm)
    # a template with a disk spec gets its disk on the default SR (tests/ops/test_storage_ops.py has more)
    other = (await api("VM.get_by_name_label", "Other install media"))[0]
    copy = await api("VM.clone", other, "with-disk")
    await api("VM.provision", copy)
    [vbd] = await api("VM.get_VBDs", copy)
    assert await api("VDI.get_virtual_size", await api("VBD.get_VDI", vbd)) == 8 << 30


async def test_installing_templates_again_updates_not_duplicates(api: Api) -> None:  # noqa: F811
    from pyxapi.ops.templates import install_templates

    before = len(await api("VM.get_all"))
    install_templates(api.ctx.store, api.ctx.config.data_dir / "images")
    assert len(await api("VM.get_all")) == before


async def test_destroy_takes_vbds_vifs_and_metrics_with_it(api: Api) -> None:  # noqa: F811
    [template] = [
        r for r in await api("VM.get_by_name_label", "Other install media") if await api("VM.get_is_a_template", r)
    ]
    vm = await api("VM.clone", template, "doomed")
    await api("VM.provision", vm)
    rec = await api("VM.get_record", vm)
    [vbd] = rec["VBDs"]
    vdi = await api("VBD.get_VDI", vbd)
    await api("VM.destroy", vm)
    assert await api.error("VBD.get_record", vbd) == ["HANDLE_INVALID", "VBD", vbd]
    assert await api.error("VM_metrics.get_record", rec["metrics"]) == ["HANDLE_INVALID", "VM_metrics", rec["metrics"]]
    assert await api("VDI.get_VBDs", vdi) == []  # the disk itself stays, as in xapi
