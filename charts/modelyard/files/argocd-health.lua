-- Argo CD health check for modelyard.dev/ModelDeployment (docs/gitops.md says how to install it).
-- The same line as kstatus (Flux): Stalled is Degraded, Reconciling is Progressing, Ready is Healthy. A canary
-- paused for a person (CanaryPaused) is Suspended, as Argo CD shows a paused Argo Rollout. Argo CD opens only the
-- base and table libraries to this script.
local hs = {status = "Progressing", message = "Waiting for the Modelyard operator to report on this ModelDeployment"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the Modelyard operator to observe generation " .. generation
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local function said(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
local stalled, reconciling, ready = conditions["Stalled"], conditions["Reconciling"], conditions["Ready"]
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = said(stalled)}
end
if reconciling ~= nil and reconciling.status == "True" then
  if reconciling.reason == "CanaryPaused" then
    return {status = "Suspended", message = said(reconciling)}
  end
  return {status = "Progressing", message = said(reconciling)}
end
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = said(ready)}
end
if ready ~= nil then
  return {status = "Progressing", message = said(ready)}
end
return hs
