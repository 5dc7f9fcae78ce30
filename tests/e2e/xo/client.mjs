#!/usr/bin/env node
// Drive Xen Orchestra's own XAPI client library (`xen-api` on npm) against a
// XenAPI server the way XO uses it, and print a JSON summary on stdout.
//
//   node client.mjs --url http://127.0.0.1:PORT/ --user root --password SECRET \
//        [--transport auto,json-rpc,xml-rpc] [--tls-url https://127.0.0.1:PORT/] \
//        [--timeout 10000] [--skip-types secret]
//
// Options can also come from the environment: XAPI_URL, XAPI_TLS_URL,
// XAPI_USER, XAPI_PASSWORD, XAPI_TRANSPORTS, XAPI_TIMEOUT, XAPI_SKIP_TYPES.
//
// One run per transport against --url, plus a run named "tls" (transport
// auto, self-signed certificate accepted) against --tls-url if given; each run
// is a fresh client, one after the other. The summary is
//   {ok, xen_api_version, node_version, runs: {<name>: run}}
// and each run is
//   {ok, url, transport, steps: {<step>: details}, requests: {<path>: count},
//    event_errors: [...], error?: {step, message, code, params, method, stack}}
// `requests` counts the HTTP requests by path (/jsonrpc or /xmlrpc), which
// shows the transport `auto` settled on. Exit status 0 only if every run passed.
//
// What a run does, in XO's order: connect (session.login_with_password,
// pool.get_all_records, system.listMethods), event.inject + every
// <class>.get_all_records + the event.from loop on every class; then checks
// the cache (pool, its master host, dom0), a few reads, VM.create,
// VM.set_name_label, the record helpers (set_<field>, update_<map>), barrier(),
// callAsync (Async.* + task watched through events + task.destroy), a failing
// callAsync, and VM.destroy; every change is awaited in the object cache, which
// only the event.from loop updates.

import diagnosticsChannel from 'node:diagnostics_channel'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'

import { createClient } from 'xen-api'

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string', default: process.env.XAPI_URL },
    'tls-url': { type: 'string', default: process.env.XAPI_TLS_URL },
    user: { type: 'string', default: process.env.XAPI_USER ?? 'root' },
    password: { type: 'string', default: process.env.XAPI_PASSWORD },
    transport: { type: 'string', default: process.env.XAPI_TRANSPORTS ?? 'auto,json-rpc,xml-rpc' },
    timeout: { type: 'string', default: process.env.XAPI_TIMEOUT ?? '10000' },
    // diagnostics only: leave these classes out of the event.from subscription
    // (XO itself subscribes to every class that has a get_all_records)
    'skip-types': { type: 'string', default: process.env.XAPI_SKIP_TYPES ?? '' },
  },
})
if (!opts.url || opts.password === undefined) {
  console.error('usage: client.mjs --url URL --user USER --password PASSWORD [--transport auto,json-rpc,xml-rpc]')
  process.exit(2)
}
const TIMEOUT = Number(opts.timeout)
const SKIP_TYPES = opts['skip-types'].split(',').filter(Boolean)
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const BAD_REF = 'OpaqueRef:00000000-0000-0000-0000-000000000bad'

// xen-api's undici publishes every request it creates
let requestCounts = {}
diagnosticsChannel.channel('undici:request:create').subscribe(({ request }) => {
  const path = request.path.split('?')[0]
  requestCounts[path] = (requestCounts[path] ?? 0) + 1
})

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function withTimeout(promise, what, ms = TIMEOUT) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

const describeError = error => ({
  message: String(error?.message ?? error),
  code: error?.code,
  params: error?.params,
  method: error?.call?.method,
  stack: error?.stack?.split('\n').slice(0, 12).join('\n'),
})

function check(condition, message) {
  if (!condition) throw new Error(message)
}

async function expectXapiError(what, promise, code) {
  try {
    await promise
  } catch (error) {
    check(error?.code === code, `${what}: expected ${code}, got ${error?.code}: ${error?.message}`)
    return { code: error.code, params: error.params }
  }
  throw new Error(`${what}: expected ${code}, but the call succeeded`)
}

// A full VM record as XO passes it to VM.create (xapi wants every field that
// has no default). Integers travel as JSON numbers, or as XML-RPC strings.
const vmRecord = (name_label, tag) => ({
  name_label,
  name_description: 'created by the xen-api npm client',
  user_version: 1,
  is_a_template: false,
  affinity: 'OpaqueRef:NULL',
  memory_static_max: 4 * GiB,
  memory_dynamic_max: 4 * GiB,
  memory_dynamic_min: 512 * MiB,
  memory_static_min: 512 * MiB,
  VCPUs_params: {},
  VCPUs_max: 2,
  VCPUs_at_startup: 1,
  actions_after_shutdown: 'destroy',
  actions_after_reboot: 'restart',
  actions_after_crash: 'restart',
  PV_bootloader: '',
  PV_kernel: '',
  PV_ramdisk: '',
  PV_args: '',
  PV_bootloader_args: '',
  PV_legacy_args: '',
  HVM_boot_policy: 'BIOS order',
  HVM_boot_params: { order: 'cdn' },
  platform: { 'device-model': 'qemu-upstream-compat', viridian: 'true' },
  PCI_bus: '',
  other_config: { 'xo:e2e': tag },
  recommendations: '',
})

// fields that a cached object holds as `undefined` (XAPI never sends those)
function undefinedFields(objects) {
  const found = []
  for (const object of objects) {
    for (const [field, value] of Object.entries(object)) {
      if (value === undefined) found.push(`${object.$type}.${field}`)
    }
  }
  return [...new Set(found)]
}

async function run(name, url, transport) {
  const steps = {}
  let step = 'create client'
  requestCounts = {}
  const xapi = createClient({
    url,
    auth: { user: opts.user, password: opts.password },
    allowUnauthorized: true,
    transport,
    syncStackTraces: true,
    debounce: 50, // XO's default is 200 ms between two event.from
    watchEvents: SKIP_TYPES.length === 0,
  })
  const eventErrors = []
  xapi.on('eventFetchingError', error => eventErrors.push(describeError(error)))

  // Wait until `predicate()` holds; it only looks at the object cache, which
  // nothing but the event.from loop updates. Gives up at once if event.from
  // fails (xen-api would only retry a minute later).
  async function eventually(what, predicate, ms = TIMEOUT) {
    const start = Date.now()
    for (;;) {
      let value
      try {
        value = predicate()
      } catch {
        value = undefined
      }
      if (value) return { value, ms: Date.now() - start }
      const failure = xapi.watchEventsError
      if (failure !== undefined) {
        throw Object.assign(new Error(`event.from failed while waiting for ${what}: ${failure.message}`), {
          code: failure.code,
          params: failure.params,
          call: failure.call,
        })
      }
      if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for the object cache: ${what}`)
      await sleep(20)
    }
  }

  // every task the object cache learns about
  const tasksSeen = []
  const onObjects = objects => {
    for (const object of Object.values(objects)) {
      if (object?.$type === 'task') tasksSeen.push({ name_label: object.name_label, status: object.status })
    }
  }
  xapi.objects.on('add', onObjects)
  xapi.objects.on('update', onObjects)

  const created = []
  try {
    step = 'connect'
    await withTimeout(xapi.connect(), 'connect')
    check(xapi.status === 'connected', `status is ${xapi.status}`)
    check(/^OpaqueRef:/.test(xapi.sessionId), `session id ${xapi.sessionId}`)
    steps.connect = { status: xapi.status, pool: xapi.pool.$ref, classes: xapi._types.length }
    if (SKIP_TYPES.length !== 0) {
      xapi._watchedTypes = xapi._types.filter(type => !SKIP_TYPES.includes(type))
      xapi.watchEvents()
      steps.connect.skipped_classes = SKIP_TYPES
    }

    step = 'initial objects'
    await withTimeout(xapi.objectsFetched, 'objectsFetched (event.inject, then every <class>.get_all_records)')
    const pool = xapi.pool
    const master = pool.$master
    check(master?.$type === 'host', `pool.$master does not resolve to a cached host: ${pool.master}`)
    const all = Object.values(xapi.objects.all)
    const counts = {}
    for (const object of all) counts[object.$type] = (counts[object.$type] ?? 0) + 1
    const vms = Object.values(xapi.objects.indexes.type.VM ?? {})
    const dom0 = vms.find(vm => vm.is_control_domain)
    check(dom0 !== undefined, 'no control domain among the cached VMs')
    const tasksBefore = new Set(Object.values(xapi.objects.indexes.type.task ?? {}).map(t => t.$ref))
    steps.objects = {
      counts,
      pool: { uuid: pool.uuid, name_label: pool.name_label, master: pool.master },
      master: { uuid: master.uuid, name_label: master.name_label, address: master.address },
      vms: vms.map(vm => ({
        uuid: vm.uuid,
        name_label: vm.name_label,
        power_state: vm.power_state,
        is_control_domain: vm.is_control_domain,
        is_a_template: vm.is_a_template,
      })),
      dom0_resident_on_master: dom0.$resident_on === master,
      undefined_fields: undefinedFields(all),
    }
    check(
      steps.objects.undefined_fields.length === 0,
      `cached objects have undefined fields: ${steps.objects.undefined_fields.slice(0, 10).join(', ')}`
    )

    step = 'first event.from'
    // xen-api takes its first token from event.inject('pool', pool) *before*
    // the initial get_all_records. On xapi that token precedes the injected
    // event, so the first event.from answers at once. Recorded, not enforced.
    try {
      const { ms } = await eventually('a first event.from', () => xapi.lastEventFetchedTimestamp !== undefined, 1000)
      steps.first_event_from = { returned: true, ms }
    } catch (error) {
      if (xapi.watchEventsError !== undefined) throw error
      steps.first_event_from = { returned: false, waited_ms: 1000 }
    }

    step = 'read-only calls'
    const hostRecord = await xapi.getRecord('host', master.$ref)
    check(hostRecord.uuid === master.uuid, 'host.get_record disagrees with the cache')
    check((await xapi.call('VM.get_by_uuid', dom0.uuid)) === dom0.$ref, 'VM.get_by_uuid disagrees with the cache')
    const poolName = await xapi.call('pool.get_name_label', pool.$ref)
    check(poolName === pool.name_label, `pool.get_name_label ${JSON.stringify(poolName)}`)
    steps.read_only = {
      pool_name_label: poolName,
      handle_invalid: await expectXapiError(
        'VM.get_record of a bogus ref',
        xapi.call('VM.get_record', BAD_REF),
        'HANDLE_INVALID'
      ),
    }

    step = 'VM.create'
    const label = `xo-e2e-${name}-${process.pid}`
    const vmRef = await xapi.call('VM.create', vmRecord(label, name))
    created.push(vmRef)
    check(/^OpaqueRef:/.test(vmRef), `VM.create returned ${vmRef}`)
    let { value: vm, ms } = await eventually('the new VM', () => xapi.getObjectByRef(vmRef, undefined))
    check(vm.name_label === label, `cached name_label ${vm.name_label}`)
    check(Number(vm.memory_static_max) === 4 * GiB, `cached memory_static_max ${vm.memory_static_max}`)
    check(vm.other_config['xo:e2e'] === name, 'cached other_config')
    check(vm.PV_args === '', `cached PV_args ${JSON.stringify(vm.PV_args)}`)
    check(xapi.getObject(vm.uuid) === vm, 'the VM is not indexed by uuid')
    steps.vm_create = {
      ref: vmRef,
      seen_after_ms: ms,
      power_state: vm.power_state,
      memory_static_max: vm.memory_static_max,
      VCPUs_max: vm.VCPUs_max,
    }

    step = 'VM.set_name_label'
    await xapi.call('VM.set_name_label', vmRef, `${label}-renamed`)
    ;({ value: vm, ms } = await eventually('the rename', () => {
      const o = xapi.getObjectByRef(vmRef)
      return o.name_label === `${label}-renamed` && o
    }))
    steps.set_name_label = { seen_after_ms: ms }

    step = 'record helpers'
    // what XO uses everywhere: set_<field>(), update_<map>(key, value),
    // update_<map>({key: value|null}) (remove_from_* then add_to_*)
    await vm.set_name_description('described')
    await vm.update_other_config('xo:key', 'value')
    await vm.update_other_config({ 'xo:e2e': null, 'xo:other': 'x' })
    ;({ value: vm, ms } = await eventually('set_name_description + other_config updates', () => {
      const o = xapi.getObjectByRef(vmRef)
      const oc = o.other_config
      return (
        o.name_description === 'described' && oc['xo:key'] === 'value' && oc['xo:other'] === 'x' && !('xo:e2e' in oc) && o
      )
    }))
    steps.record_helpers = { seen_after_ms: ms, other_config: vm.other_config }

    step = 'barrier'
    // barrier() sets pool.other_config[xo:barrier:*] and waits for that event
    const start = Date.now()
    const fresh = await withTimeout(xapi.barrier(vmRef), 'barrier()')
    check(fresh === xapi.getObjectByRef(vmRef), 'barrier() did not return the cached object')
    steps.barrier = { ms: Date.now() - start }

    step = 'callAsync VM.create'
    // callAsync = Async.<method>, the task watched through events, task.destroy
    const asyncRef = await withTimeout(xapi.callAsync('VM.create', vmRecord(`${label}-async`, name)), 'Async.VM.create')
    created.push(asyncRef)
    check(/^OpaqueRef:/.test(asyncRef), `Async.VM.create task result ${JSON.stringify(asyncRef)}`)
    const { value: asyncVm } = await eventually('the VM made by Async.VM.create', () =>
      xapi.getObjectByRef(asyncRef, undefined)
    )
    const asyncTasksSeen = tasksSeen.filter(t => t.name_label === 'Async.VM.create')
    steps.async_create = {
      result: asyncRef,
      name_label: asyncVm.name_label,
      task_statuses_seen: [...new Set(asyncTasksSeen.map(t => t.status))],
    }
    check(asyncTasksSeen.length !== 0, 'the Async.VM.create task never showed in the object cache')

    step = 'callAsync void methods'
    const voidResult = await withTimeout(
      xapi.callAsync('VM.set_actions_after_crash', asyncRef, 'destroy'),
      'Async.VM.set_actions_after_crash'
    )
    check(voidResult === '', `Async.VM.set_actions_after_crash task result ${JSON.stringify(voidResult)}`)
    await withTimeout(
      asyncVm.$callAsync('add_to_blocked_operations', 'migrate_send', 'xo e2e'),
      'Async.VM.add_to_blocked_operations'
    )
    ;({ ms } = await eventually('actions_after_crash + blocked_operations', () => {
      const o = xapi.getObjectByRef(asyncRef)
      return o.actions_after_crash === 'destroy' && o.blocked_operations.migrate_send === 'xo e2e'
    }))
    steps.async_void = { result: voidResult, seen_after_ms: ms }

    step = 'callAsync failure'
    // a bad handle fails the task; the error comes back from task.error_info
    steps.async_failure = await expectXapiError(
      'Async.VM.destroy of a bogus ref',
      withTimeout(xapi.callAsync('VM.destroy', BAD_REF), 'Async.VM.destroy'),
      'HANDLE_INVALID'
    )

    step = 'callAsync VM.destroy'
    await withTimeout(xapi.callAsync('VM.destroy', asyncRef), 'Async.VM.destroy')
    created.splice(created.indexOf(asyncRef), 1)
    ;({ ms } = await eventually('the destroyed VM gone', () => xapi.getObjectByRef(asyncRef, undefined) === undefined))
    steps.async_destroy = { gone_after_ms: ms }

    step = 'tasks cleaned up'
    // callAsync destroys its tasks: the cache must see them go (del events)
    const ourTasks = () =>
      Object.values(xapi.objects.indexes.type.task ?? {}).filter(
        t => !tasksBefore.has(t.$ref) && String(t.name_label).startsWith('Async.')
      )
    try {
      ;({ ms } = await eventually('no Async task of ours left in the cache', () => ourTasks().length === 0, 5000))
    } catch (error) {
      const left = ourTasks().map(t => ({ ref: t.$ref, name_label: t.name_label, status: t.status }))
      throw new Error(`${error.message}: ${JSON.stringify(left)}`)
    }
    steps.tasks = { gone_after_ms: ms }

    step = 'VM.destroy'
    await xapi.call('VM.destroy', vmRef)
    created.splice(created.indexOf(vmRef), 1)
    ;({ ms } = await eventually('the VM gone', () => xapi.getObjectByRef(vmRef, undefined) === undefined))
    steps.destroy = { gone_after_ms: ms }

    step = 'disconnect'
    await xapi.disconnect()
    check(xapi.status === 'disconnected', `status ${xapi.status}`)
    return { ok: true, url, transport, steps, requests: requestCounts, event_errors: eventErrors }
  } catch (error) {
    const failure = { step, ...describeError(error) }
    return { ok: false, url, transport, steps, error: failure, requests: requestCounts, event_errors: eventErrors }
  } finally {
    for (const ref of created) {
      try {
        await xapi.call('VM.destroy', ref)
      } catch {}
    }
    try {
      await xapi.disconnect()
    } catch {}
  }
}

const runs = {}
for (const transport of opts.transport.split(',').filter(Boolean)) {
  runs[transport] = await run(transport, opts.url, transport)
}
if (opts['tls-url']) {
  runs.tls = await run('tls', opts['tls-url'], 'auto')
}
const require = createRequire(import.meta.url)
const summary = {
  ok: Object.values(runs).every(r => r.ok),
  xen_api_version: JSON.parse(readFileSync(require.resolve('xen-api/package.json'), 'utf8')).version,
  node_version: process.version,
  runs,
}
process.stdout.write(JSON.stringify(summary, null, 2) + '\n')
// xen-api's event loop keeps a 60 s event.from in flight: do not wait for it
process.exit(summary.ok ? 0 : 1)
