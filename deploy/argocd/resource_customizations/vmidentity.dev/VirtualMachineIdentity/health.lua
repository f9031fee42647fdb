-- Argo CD health check for vmidentity.dev/VirtualMachineIdentity
-- (resource.customizations.health.vmidentity.dev_VirtualMachineIdentity in argocd-cm; see
-- docs/gitops.md). Reads the kstatus conditions the controller writes (Ready, Reconciling,
-- Stalled) and status.observedGeneration:
--   deleting                                   -> Progressing
--   no status / status for an older generation -> Progressing
--   Stalled=True                               -> Degraded (needs a human)
--   Reconciling=True                           -> Progressing
--   Ready=True                                 -> Healthy
--   otherwise                                  -> Progressing
-- Tested with lua5.4 on testdata/ by health_test.yaml (scripts/check-monitoring.sh), the layout
-- of Argo CD's own resource_customizations/.
local hs = {}

local function condition(t)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == t then
        return c
      end
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason or ""
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: detaching what this object put on its target"
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to reconcile"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
